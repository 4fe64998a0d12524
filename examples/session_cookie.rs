//! Prints a valid session `Cookie` header value for the `[session]` of a configuration file:
//! `cargo run --release --example session_cookie -- gatehouse.toml`. The load benchmark uses it
//! to measure the session-cookie path without driving a browser login. It holds no secret of
//! its own: whoever can read the session secret can seal sessions anyway. The session goes
//! through the configured store, so with `store = "redis"` it is written to that Redis and the
//! cookie carries its id.

use std::process::ExitCode;

use gatehouse::session::{Session, SessionStore};
use http::HeaderMap;

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: session_cookie CONFIG.toml");
        return ExitCode::from(2);
    };
    let config = match gatehouse::config::load_file(path.as_ref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    let Some(session_config) = &config.session else {
        eprintln!("{path} has no [session]");
        return ExitCode::from(2);
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // A typical person: email, a handful of groups, no tokens to forward.
    let mut session = Session::new("bench-user", now);
    session.email = Some("bench-user@example.com".to_owned());
    session.email_verified = true;
    session.preferred_username = Some("bench".to_owned());
    session.groups = ["staff", "developers", "readers", "ops", "billing"]
        .map(str::to_owned)
        .to_vec();
    // A session id as a login makes one (256 random bits).
    session.id = gatehouse::oidc::random_token(32);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("no runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let cookies = runtime.block_on(async {
        let store = SessionStore::new(session_config, Default::default())?;
        store.create(&session, &HeaderMap::new()).await
    });
    match cookies {
        Ok(set_cookies) => {
            let pairs: Vec<String> = set_cookies
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter_map(|v| v.split(';').next())
                .map(str::to_owned)
                .collect();
            println!("{}", pairs.join("; "));
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("cannot seal a session: {err}");
            ExitCode::FAILURE
        }
    }
}
