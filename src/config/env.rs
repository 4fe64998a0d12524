//! Configuration step 2 of 3: environment overrides. `GATEHOUSE_<SECTION>__<KEY>=value`
//! (segments separated by `__`, case-insensitive, numbers index arrays of tables) is written
//! into the parsed document before it is deserialized, so an override goes through exactly
//! the same type checks and validation as the file.
//!
//! Overrides are parsed as a second, synthetic TOML document whose text starts after the end
//! of the real file. That gives every overridden key and value a span of its own, beyond the
//! file, and `validate.rs` maps such spans back to the variable's name for its messages.

use std::fmt::Write as _;
use std::ops::Range;

use toml_edit::{ArrayOfTables, Item, Key, Table, TableLike};

/// Variables with this prefix and a `__` (every key lives in a section:
/// `GATEHOUSE_<SECTION>__<KEY>`) are overrides. Other `GATEHOUSE_*` variables, such as
/// [`CONFIG_VAR`] or a deployment's own `GATEHOUSE_VERSION`, are not the configuration's.
pub const PREFIX: &str = "GATEHOUSE_";
/// Names the config file itself, so it cannot be a key inside it.
pub const CONFIG_VAR: &str = "GATEHOUSE_CONFIG";

/// What applying the overrides left behind for locating problems later.
#[derive(Debug, Default)]
pub struct Applied {
    /// Byte range of each variable's line in the synthetic document, which starts at the
    /// end of the file's text.
    pub spans: Vec<(Range<usize>, String)>,
    /// Tables created only because a variable named a path inside them (they have no span
    /// of their own): display key path → variable.
    pub created: Vec<(String, String)>,
    /// Overrides that could not be applied: variable → (key path, reason).
    pub problems: Vec<(String, String, String)>,
}

/// Only the variables that are overrides, sorted so the result does not depend on the
/// order the environment happens to list them in.
pub fn overrides(env: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| {
            k.starts_with(PREFIX) && k != CONFIG_VAR && k[PREFIX.len()..].contains("__")
        })
        .cloned()
        .collect();
    out.sort();
    out
}

fn segments(var: &str) -> Vec<String> {
    var[PREFIX.len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect()
}

fn display_path(segs: &[String]) -> String {
    let mut s = String::new();
    for seg in segs {
        if seg.parse::<usize>().is_ok() {
            let _ = write!(s, "[{seg}]");
        } else {
            if !s.is_empty() {
                s.push('.');
            }
            s.push_str(seg);
        }
    }
    s
}

/// The text a variable's value stands for: a TOML value when it is one (numbers, booleans,
/// arrays, quoted strings), otherwise the plain string, quoted.
fn value_text(raw: &str) -> String {
    let trimmed = raw.trim();
    if !trimmed.is_empty() && trimmed.parse::<toml_edit::Value>().is_ok() {
        trimmed.to_owned()
    } else {
        toml_edit::Value::from(raw).to_string().trim().to_owned()
    }
}

/// Writes every override into `root`. `text_len` is the length of the file's text, where the
/// synthetic document's spans start.
pub fn apply(root: &mut Table, text_len: usize, env: &[(String, String)]) -> Applied {
    let mut applied = Applied::default();
    let mut synthetic = " ".repeat(text_len);
    synthetic.push('\n');
    let mut entries = Vec::new();
    for (i, (var, raw)) in overrides(env).into_iter().enumerate() {
        let segs = segments(&var);
        if segs.iter().any(String::is_empty) {
            applied.problems.push((
                var,
                String::new(),
                "expected GATEHOUSE_<SECTION>__<KEY>, with `__` between non-empty parts".into(),
            ));
            continue;
        }
        let start = synthetic.len();
        let dotted: Vec<String> = segs
            .iter()
            .map(|s| Key::new(s.as_str()).display_repr().into_owned())
            .collect();
        let _ = writeln!(
            synthetic,
            "e{i}.{} = {}",
            dotted.join("."),
            value_text(&raw)
        );
        applied.spans.push((start..synthetic.len(), var.clone()));
        entries.push((i, var, segs));
    }
    if entries.is_empty() {
        return applied;
    }
    let doc = match toml_edit::Document::parse(synthetic.as_str()) {
        Ok(doc) => doc,
        Err(e) => {
            // One bad value must not hide the others: name the line's variable when we can.
            let var = e
                .span()
                .and_then(|sp| {
                    applied
                        .spans
                        .iter()
                        .find(|(r, _)| r.contains(&sp.start))
                        .map(|(_, v)| v.clone())
                })
                .unwrap_or_else(|| PREFIX.to_owned());
            applied.problems.push((
                var,
                String::new(),
                format!("cannot use the value: {}", e.message()),
            ));
            return applied;
        }
    };
    let synth_root = doc.as_table();
    for (i, var, segs) in entries {
        let Some(synth) = synth_root
            .get(&format!("e{i}"))
            .and_then(Item::as_table_like)
        else {
            continue;
        };
        if let Err(reason) = merge(root, synth, &segs, 0, &var, &mut applied.created) {
            applied.problems.push((var, display_path(&segs), reason));
        }
    }
    applied
}

/// Sets `segs[depth..]` inside `target` from the parallel synthetic table `synth`.
fn merge(
    target: &mut dyn TableLike,
    synth: &dyn TableLike,
    segs: &[String],
    depth: usize,
    var: &str,
    created: &mut Vec<(String, String)>,
) -> Result<(), String> {
    let seg = segs[depth].as_str();
    let Some((skey, sitem)) = synth.get_key_value(seg) else {
        return Err("internal: override path lost".into());
    };
    let rest = &segs[depth + 1..];
    if rest.is_empty() {
        target.remove(seg);
        if let toml_edit::Entry::Vacant(v) = target.entry_format(skey) {
            v.insert(sitem.clone());
        }
        return Ok(());
    }
    let here = display_path(&segs[..=depth]);
    if let Ok(index) = rest[0].parse::<usize>() {
        let Some(sub) = sitem.as_table_like() else {
            return Err("internal: override path lost".into());
        };
        let Some((_, elem_synth)) = sub.get_key_value(&rest[0]) else {
            return Err("internal: override path lost".into());
        };
        let Some(elem_synth) = elem_synth.as_table_like() else {
            return Err("internal: override path lost".into());
        };
        if rest.len() < 2 {
            return Err(format!(
                "`{here}` elements are tables: name a key inside one, e.g. {var}__URL"
            ));
        }
        if let toml_edit::Entry::Vacant(v) = target.entry_format(skey) {
            v.insert(Item::ArrayOfTables(ArrayOfTables::new()));
        }
        let Some(array) = target.get_mut(seg).and_then(Item::as_array_of_tables_mut) else {
            return Err(format!("`{here}` is not an array of tables"));
        };
        if index == array.len() {
            array.push(Table::new());
            created.push((display_path(&segs[..=depth + 1]), var.to_owned()));
        }
        let len = array.len();
        let Some(table) = array.get_mut(index) else {
            return Err(format!(
                "index {index} is out of range: `{here}` has {len} entries (the next one may be added)"
            ));
        };
        // The element itself has no synthetic counterpart beyond its index: descend into it
        // with the synthetic table under the index key.
        return merge(table, elem_synth, segs, depth + 2, var, created);
    }
    if let toml_edit::Entry::Vacant(v) = target.entry_format(skey) {
        let mut t = Table::new();
        t.set_implicit(true);
        v.insert(Item::Table(t));
        created.push((here.clone(), var.to_owned()));
    }
    let Some(sub_synth) = sitem.as_table_like() else {
        return Err("internal: override path lost".into());
    };
    match target.get_mut(seg).and_then(Item::as_table_like_mut) {
        Some(sub) => merge(sub, sub_synth, segs, depth + 1, var, created),
        None => Err(format!("`{here}` is not a table")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn only_gatehouse_vars_but_not_the_config_path_are_overrides() {
        let vars = env(&[
            ("PATH", "/bin"),
            ("GATEHOUSE_CONFIG", "/etc/gatehouse.toml"),
            ("GATEHOUSE_BIN", "/usr/local/bin/gatehouse"),
            ("GATEHOUSE_VERSION", "1.2"),
            ("GATEHOUSE_LOG__LEVEL", "debug"),
        ]);
        assert_eq!(overrides(&vars), env(&[("GATEHOUSE_LOG__LEVEL", "debug")]));
    }

    #[test]
    fn values_are_toml_when_they_parse_and_strings_otherwise() {
        assert_eq!(value_text("42"), "42");
        assert_eq!(value_text("true"), "true");
        assert_eq!(value_text("[\"a\", \"b\"]"), "[\"a\", \"b\"]");
        assert_eq!(value_text("\"quoted\""), "\"quoted\"");
        assert_eq!(value_text("127.0.0.1:4180"), "\"127.0.0.1:4180\"");
        assert_eq!(value_text("30s"), "\"30s\"");
    }

    #[test]
    fn paths_display_like_key_paths() {
        let segs = segments("GATEHOUSE_UPSTREAMS__0__URL");
        assert_eq!(display_path(&segs), "upstreams[0].url");
    }

    #[test]
    fn overrides_create_and_replace_keys() {
        let text = "[server]\nlisten = \"127.0.0.1:1\"\n";
        let mut root = toml_edit::Document::parse(text).unwrap().into_table();
        let vars = env(&[
            ("GATEHOUSE_SERVER__LISTEN", "0.0.0.0:80"),
            ("GATEHOUSE_UPSTREAMS__0__URL", "http://a"),
            ("GATEHOUSE_SERVER__TLS__CERT_FILE", "/c.pem"),
        ]);
        let applied = apply(&mut root, text.len(), &vars);
        assert!(applied.problems.is_empty(), "{:?}", applied.problems);
        let doc = toml_edit::DocumentMut::from(root);
        assert_eq!(doc["server"]["listen"].as_str(), Some("0.0.0.0:80"));
        assert_eq!(doc["server"]["tls"]["cert_file"].as_str(), Some("/c.pem"));
        assert_eq!(doc["upstreams"][0]["url"].as_str(), Some("http://a"));
    }
}
