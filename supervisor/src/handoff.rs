//! How a child gets its configuration: the supervisor writes the configuration it loaded (file, environment
//! and flags already layered and checked) to one YAML file in the runtime directory, and starts every child
//! with `--config` that file and none of the supervisor's `DEADSFU_*` variables.
//!
//! A file rather than flags, so no key has to be rendered back into a flag (each new key would need it) and
//! the tokens stay out of `ps`; rather than an environment variable, because `--config FILE` is how every
//! process is started under systemd too, the file outlives the restarts of a child, and whoever runs the
//! host can read what the children run with. The file is the user's alone (mode 0600): it may hold tokens.
//! The supervisor's `DEADSFU_*` variables are left out of the children's environment because a variable
//! overrides the file: `DEADSFU_HTTP=:9000 deadsfu --http :9001` serves on 9001, and so must signaling.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use deadsfu_runtime::config::Config;
use deadsfu_runtime::process::SUPERVISOR_PID_ENV;

/// Name of the file in the runtime directory holding the children's configuration while the supervisor runs.
pub const CONFIG_FILE: &str = "deadsfu.effective.yaml";

/// Writes `cfg`, with its runtime directory resolved to `runtime_dir`, to [`CONFIG_FILE`] there, replacing
/// the file of an earlier run whole (a child starting meanwhile reads the old file or the new one, never a
/// part). Returns the file's path.
pub fn write_config(runtime_dir: &Path, cfg: &Config) -> std::io::Result<PathBuf> {
    let cfg = Config { runtime_dir: Some(runtime_dir.to_path_buf()), ..cfg.clone() };
    let path = runtime_dir.join(CONFIG_FILE);
    let partial = runtime_dir.join(format!("{CONFIG_FILE}.partial"));
    let _ = std::fs::remove_file(&partial);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&partial)?;
    file.write_all(cfg.to_yaml().as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

/// The command that starts `program` with the configuration in `config_file` and `args` after it: the
/// supervisor's environment `vars` without its `DEADSFU_*` variables, plus the supervisor's pid, so the child
/// dies with it.
pub fn command(
    program: &Path,
    config_file: &Path,
    args: &[String],
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg("--config").arg(config_file).args(args);
    for (name, _) in vars {
        if name.to_string_lossy().starts_with("DEADSFU_") {
            cmd.env_remove(name);
        }
    }
    cmd.env(SUPERVISOR_PID_ENV, std::process::id().to_string());
    cmd
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_file_is_private_and_reads_back_as_the_configuration() {
        let dir = std::env::temp_dir().join(format!("deadsfu-handoff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = Config {
            workers: Some(3),
            bearer_token: Some("secret".into()),
            ice_tcp: false,
            max_pulls: 7,
            ..Config::default()
        };
        let path = write_config(&dir, &cfg).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let read = Config::from_file(&path).unwrap();
        assert_eq!(read, Config { runtime_dir: Some(dir.clone()), ..cfg.clone() });
        // A second run replaces it.
        let again = write_config(&dir, &Config { workers: Some(1), ..cfg }).unwrap();
        assert_eq!(Config::from_file(&again).unwrap().workers, Some(1));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn children_get_the_file_and_none_of_the_variables() {
        let vars = [("DEADSFU_HTTP", ":9000"), ("DEADSFU_CONFIG", "/etc/other.yaml"), ("HOME", "/home/u")];
        let vars = vars.map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let args = ["--index".to_string(), "2".to_string()];
        let cmd = command(Path::new("/bin/deadsfu-fanout"), Path::new("/run/d/f.yaml"), &args, vars);
        let argv: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(argv, ["--config", "/run/d/f.yaml", "--index", "2"]);
        let envs: Vec<_> =
            cmd.get_envs().map(|(k, v)| (k.to_string_lossy().into_owned(), v.map(|v| v.to_owned()))).collect();
        assert!(envs.contains(&("DEADSFU_HTTP".into(), None)), "{envs:?}");
        assert!(envs.contains(&("DEADSFU_CONFIG".into(), None)), "{envs:?}");
        assert!(!envs.iter().any(|(k, _)| k == "HOME"), "other variables are inherited untouched: {envs:?}");
        let pid = OsString::from(std::process::id().to_string());
        assert!(envs.contains(&(SUPERVISOR_PID_ENV.into(), Some(pid))), "{envs:?}");
    }
}
