//! placeholder
use super::Config;
use std::path::Path;
#[derive(Debug, thiserror::Error)]
#[error("config")]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}
#[derive(Debug)]
pub struct Problem;
pub fn load_file(_p: &Path) -> Result<Config, ConfigError> {
    Err(ConfigError { problems: vec![] })
}
pub fn load_str(
    _t: &str,
    _p: Option<&Path>,
    _env: &[(String, String)],
) -> Result<Config, ConfigError> {
    Err(ConfigError { problems: vec![] })
}
pub fn render_effective(_c: &Config) -> String {
    String::new()
}
