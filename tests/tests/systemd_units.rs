//! The systemd units (`systemd/`), `scripts/install` and `config/deadsfu.example.yaml`.
//!
//! Without systemd running: the unit files are parsed and the directives that matter are checked here;
//! `systemd-analyze verify` and `systemd-analyze security --offline=true` run on a copy of the units whose
//! `ExecStart=` points at the built binaries, when `systemd-analyze` is installed (skipped, and said so,
//! when it is not). `scripts/install` runs in `--dry-run` and `--root DIR` modes, which change nothing on
//! the host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use deadsfu_tests::bin_dir;

const SERVICES: [&str; 3] = ["deadsfu-signaling.service", "deadsfu-ingest.service", "deadsfu-fanout@.service"];
const ALL_UNITS: [&str; 4] =
    ["deadsfu.target", "deadsfu-signaling.service", "deadsfu-ingest.service", "deadsfu-fanout@.service"];

/// Directives every service must carry, with their exact value.
const EXACT: &[(&str, &str, &str)] = &[
    ("Service", "Type", "notify"),
    ("Service", "NotifyAccess", "main"),
    ("Service", "WatchdogSec", "10s"),
    ("Service", "Restart", "always"),
    ("Service", "User", "deadsfu"),
    ("Service", "Group", "deadsfu"),
    ("Service", "RuntimeDirectory", "deadsfu"),
    ("Service", "RuntimeDirectoryMode", "0750"),
    ("Service", "RuntimeDirectoryPreserve", "yes"),
    ("Service", "ProtectSystem", "strict"),
    ("Service", "ProtectHome", "yes"),
    ("Service", "PrivateTmp", "yes"),
    ("Service", "NoNewPrivileges", "yes"),
    ("Service", "PrivateDevices", "yes"),
    ("Service", "ProtectKernelTunables", "yes"),
    ("Service", "ProtectKernelModules", "yes"),
    ("Service", "ProtectKernelLogs", "yes"),
    ("Service", "ProtectControlGroups", "yes"),
    ("Service", "RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK"),
    ("Service", "RestrictNamespaces", "yes"),
    ("Service", "LockPersonality", "yes"),
    ("Service", "MemoryDenyWriteExecute", "yes"),
    ("Service", "RestrictRealtime", "yes"),
    ("Service", "SystemCallArchitectures", "native"),
    ("Unit", "PartOf", "deadsfu.target"),
    ("Install", "WantedBy", "deadsfu.target"),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the repository").to_path_buf()
}

/// A unit file: section name -> (key, value) in file order (keys may repeat).
type Unit = BTreeMap<String, Vec<(String, String)>>;

/// Parses a unit file the way systemd reads it (sections, `Key=Value`, `#`/`;` comments, `\` continuations),
/// and fails on anything else.
fn parse_unit(name: &str, text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section: Option<String> = None;
    let mut pending = String::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';')) {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        let full = std::mem::take(&mut pending) + line;
        if let Some(name) = full.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            assert!(!name.is_empty() && !name.contains(['[', ']']), "{name}: line {}: bad section header", n + 1);
            section = Some(name.to_string());
            unit.entry(name.to_string()).or_default();
            continue;
        }
        let (key, value) =
            full.split_once('=').unwrap_or_else(|| panic!("{name}: line {}: not Key=Value: {raw}", n + 1));
        let key = key.trim();
        assert!(
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric()),
            "{name}: line {}: bad key `{key}`",
            n + 1
        );
        let section = section.clone().unwrap_or_else(|| panic!("{name}: line {}: `{key}` before any section", n + 1));
        unit.get_mut(&section).expect("section exists").push((key.to_string(), value.trim().to_string()));
    }
    assert!(pending.is_empty(), "{name}: file ends in a continuation line");
    unit
}

fn values<'a>(unit: &'a Unit, section: &str, key: &str) -> Vec<&'a str> {
    unit.get(section)
        .map(|entries| entries.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect())
        .unwrap_or_default()
}

/// The value of a key set once (the last assignment, as systemd applies it).
fn value<'a>(unit: &'a Unit, name: &str, section: &str, key: &str) -> &'a str {
    values(unit, section, key).last().copied().unwrap_or_else(|| panic!("{name}: no {key}= in [{section}]"))
}

fn read_units() -> BTreeMap<&'static str, (String, Unit)> {
    ALL_UNITS
        .iter()
        .map(|&name| {
            let path = repo().join("systemd").join(name);
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let unit = parse_unit(name, &text);
            (name, (text, unit))
        })
        .collect()
}

fn seconds(name: &str, span: &str) -> f64 {
    let (num, scale) = if let Some(ms) = span.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = span.strip_suffix('s') {
        (s, 1.0)
    } else {
        (span, 1.0)
    };
    num.trim().parse::<f64>().unwrap_or_else(|_| panic!("{name}: time span `{span}` is not in s or ms")) * scale
}

#[test]
fn units_carry_the_directives_that_matter() {
    let units = read_units();
    for name in SERVICES {
        let (_, unit) = &units[name];
        for section in ["Unit", "Service", "Install"] {
            assert!(unit.contains_key(section), "{name}: no [{section}] section");
        }
        for &(section, key, want) in EXACT {
            assert_eq!(value(unit, name, section, key), want, "{name}: [{section}] {key}=");
        }
        let restart_sec = seconds(name, value(unit, name, "Service", "RestartSec"));
        assert!(restart_sec > 0.0 && restart_sec <= 5.0, "{name}: RestartSec={restart_sec}s is not short");
        assert!(
            values(unit, "Service", "SystemCallFilter").contains(&"@system-service"),
            "{name}: no SystemCallFilter=@system-service"
        );
        // Independent restarts: nothing that stops or restarts one unit along with another.
        for key in ["BindsTo", "Requires", "Requisite"] {
            let deps = values(unit, "Unit", key);
            assert!(deps.iter().all(|d| !d.contains("deadsfu")), "{name}: {key}={deps:?} ties it to another unit");
        }
        // Capabilities: none, except binding a port below 1024 in signaling.
        let bounding = value(unit, name, "Service", "CapabilityBoundingSet");
        let ambient = values(unit, "Service", "AmbientCapabilities");
        if name == "deadsfu-signaling.service" {
            assert_eq!(bounding, "CAP_NET_BIND_SERVICE", "{name}");
            assert_eq!(ambient.last().copied().unwrap_or(""), "CAP_NET_BIND_SERVICE", "{name}");
        } else {
            assert_eq!(bounding, "", "{name}: CapabilityBoundingSet= must be empty");
            assert!(ambient.iter().all(|a| a.is_empty()), "{name}: AmbientCapabilities={ambient:?}");
        }
        let exec = value(unit, name, "Service", "ExecStart");
        let program = name.trim_end_matches(".service").trim_end_matches('@');
        assert!(exec.starts_with(&format!("/usr/local/bin/{program} ")), "{name}: ExecStart={exec}");
        assert!(exec.contains("--config /etc/deadsfu/deadsfu.yaml"), "{name}: ExecStart={exec}");
    }
    // The template is instantiated per worker index.
    let (_, fanout) = &units["deadsfu-fanout@.service"];
    let exec = value(fanout, "deadsfu-fanout@.service", "Service", "ExecStart");
    assert!(exec.split_whitespace().collect::<Vec<_>>().windows(2).any(|w| w == ["--index", "%i"]), "{exec}");
    // The same runtime directory everywhere, or systemd would chmod it back and forth.
    let dirs: Vec<_> = SERVICES
        .iter()
        .map(|n| {
            let u = &units[n].1;
            (value(u, n, "Service", "RuntimeDirectory"), value(u, n, "Service", "RuntimeDirectoryMode"))
        })
        .collect();
    assert!(dirs.windows(2).all(|w| w[0] == w[1]), "{dirs:?}");
    // The target groups them and comes up at boot.
    let (_, target) = &units["deadsfu.target"];
    assert_eq!(value(target, "deadsfu.target", "Install", "WantedBy"), "multi-user.target");
    let wants = values(target, "Unit", "Wants").join(" ");
    for s in ["deadsfu-signaling.service", "deadsfu-ingest.service"] {
        assert!(wants.split_whitespace().any(|w| w == s), "deadsfu.target does not want {s}: {wants}");
    }
}

/// `systemd-analyze`, if installed.
fn systemd_analyze() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("systemd-analyze")).find(|p| p.is_file())
}

/// A fresh scratch directory under the system's temporary directory.
fn scratch(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("deadsfu-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temporary directory is writable");
    dir
}

/// The units copied into a scratch directory, `ExecStart=` pointing at this build's binaries.
fn units_for_this_build(tag: &str) -> PathBuf {
    let dir = scratch(&format!("units-{tag}"));
    let bins = bin_dir();
    for name in SERVICES {
        let program = name.trim_end_matches(".service").trim_end_matches('@');
        assert!(bins.join(program).is_file(), "{} is not built (cargo build --release --workspace)", program);
    }
    for name in ALL_UNITS {
        let text = std::fs::read_to_string(repo().join("systemd").join(name)).expect("unit readable");
        let text = text.replace("/usr/local/bin/", &format!("{}/", bins.display()));
        std::fs::write(dir.join(name), text).expect("scratch directory is writable");
    }
    dir
}

fn show(out: &Output) -> String {
    format!("status {}\n{}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn systemd_analyze_verifies_the_units() {
    let Some(analyze) = systemd_analyze() else {
        eprintln!("SKIPPED systemd-analyze verify: systemd-analyze is not installed (apt-get install systemd)");
        return;
    };
    let dir = units_for_this_build("verify");
    // The template is verified through instances (a template itself cannot be loaded).
    let args: Vec<PathBuf> = ["deadsfu.target", "deadsfu-signaling.service", "deadsfu-ingest.service"]
        .iter()
        .chain(&["deadsfu-fanout@0.service", "deadsfu-fanout@7.service"])
        .map(|u| dir.join(u))
        .collect();
    let out = Command::new(&analyze).args(["verify", "--man=no"]).args(&args).output().expect("systemd-analyze runs");
    let text = show(&out);
    assert!(out.status.success(), "systemd-analyze verify failed: {text}");
    // Warnings (unknown keys, bad values) leave the status at 0: none may name our units.
    let complaints: Vec<_> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .chain(String::from_utf8_lossy(&out.stdout).lines())
        .filter(|l| l.contains("deadsfu"))
        .map(String::from)
        .collect();
    assert!(complaints.is_empty(), "systemd-analyze verify complains:\n{}", complaints.join("\n"));
    eprintln!("systemd-analyze verify: the units are clean");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn systemd_analyze_security_exposure() {
    let Some(analyze) = systemd_analyze() else {
        eprintln!("SKIPPED systemd-analyze security: systemd-analyze is not installed");
        return;
    };
    let dir = units_for_this_build("security");
    for unit in ["deadsfu-signaling.service", "deadsfu-ingest.service", "deadsfu-fanout@0.service"] {
        let out = Command::new(&analyze)
            .args(["security", "--offline=true", "--no-pager"])
            .arg(dir.join(unit))
            .output()
            .expect("systemd-analyze runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(line) = stdout.lines().find(|l| l.contains("Overall exposure level")) else {
            // systemd older than 250 has no --offline.
            eprintln!("SKIPPED systemd-analyze security --offline=true {unit}: {}", show(&out).trim());
            return;
        };
        eprintln!("{}", line.trim_start_matches(|c: char| !c.is_ascii_alphanumeric()));
        let level: f64 = line
            .split(':')
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("cannot read the exposure level in `{line}`"));
        assert!(level <= 2.0, "{unit}: exposure {level} > 2.0 (hardening lost?)\n{stdout}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn install(args: &[&str]) -> (Output, String) {
    let out = Command::new(repo().join("scripts/install"))
        .args(args)
        .env("DEADSFU_BIN_DIR", bin_dir())
        .current_dir(repo())
        .output()
        .expect("scripts/install runs (bash)");
    let text = show(&out);
    assert!(out.status.success(), "scripts/install {args:?}: {text}");
    (out, text)
}

#[test]
fn install_dry_run_enables_the_asked_workers() {
    let (out, text) = install(&["--dry-run", "--workers", "3"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let enables: Vec<&str> = stdout.lines().filter(|l| l.contains("systemctl") && l.contains(" enable ")).collect();
    assert!(!enables.is_empty(), "no systemctl enable in:\n{text}");
    let enabled: Vec<&str> = enables.iter().flat_map(|l| l.split_whitespace()).collect();
    for unit in ["deadsfu.target", "deadsfu-signaling.service", "deadsfu-ingest.service"] {
        assert!(enabled.contains(&unit), "{unit} not enabled:\n{text}");
    }
    for k in 0..3 {
        assert!(enabled.contains(&format!("deadsfu-fanout@{k}.service").as_str()), "worker {k} not enabled:\n{text}");
    }
    assert!(!enabled.iter().any(|u| u.starts_with("deadsfu-fanout@3")), "worker 3 enabled:\n{text}");
    assert!(stdout.contains("dry run"), "{text}");
}

#[test]
fn install_into_an_image_root_then_shrink_the_workers() {
    if Command::new("systemctl").arg("--version").output().is_err() {
        eprintln!("SKIPPED scripts/install --root: systemctl is not installed");
        return;
    }
    let root = scratch("install-root");
    let root_arg = root.to_str().expect("utf-8 path");
    let wants = root.join("etc/systemd/system/deadsfu.target.wants");
    let enabled = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&wants)
            .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    install(&["--root", root_arg, "--prefix", "/opt/sfu", "--workers", "3"]);
    assert_eq!(
        enabled(),
        [
            "deadsfu-fanout@0.service",
            "deadsfu-fanout@1.service",
            "deadsfu-fanout@2.service",
            "deadsfu-ingest.service",
            "deadsfu-signaling.service"
        ]
    );
    assert!(root.join("etc/systemd/system/multi-user.target.wants/deadsfu.target").symlink_metadata().is_ok());
    let fanout = std::fs::read_to_string(root.join("etc/systemd/system/deadsfu-fanout@.service")).unwrap();
    assert!(fanout.contains("ExecStart=/opt/sfu/bin/deadsfu-fanout --config /etc/deadsfu/deadsfu.yaml --index %i"));
    for b in ["deadsfu-signaling", "deadsfu-ingest", "deadsfu-fanout", "deadsfu-ring"] {
        assert!(root.join("opt/sfu/bin").join(b).is_file(), "{b} not installed");
    }
    let conf = root.join("etc/deadsfu/deadsfu.yaml");
    let example = std::fs::read_to_string(repo().join("config/deadsfu.example.yaml")).unwrap();
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), example);

    // A second run keeps an edited configuration and disables workers beyond the new count.
    std::fs::write(&conf, "http: :9000\n").unwrap();
    let (_, text) = install(&["--root", root_arg, "--prefix", "/opt/sfu", "--workers", "1"]);
    assert_eq!(
        enabled(),
        ["deadsfu-fanout@0.service", "deadsfu-ingest.service", "deadsfu-signaling.service"],
        "{text}"
    );
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "http: :9000\n");
    std::fs::remove_dir_all(&root).ok();
}

/// Runs a binary of this build with no `DEADSFU_*` variable from the caller's environment.
fn print_config(args: &[&str]) -> String {
    let mut cmd = Command::new(bin_dir().join("deadsfu-signaling"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("DEADSFU_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.args(args).arg("--print-config").current_dir(repo()).output().expect("deadsfu-signaling runs");
    assert!(out.status.success(), "deadsfu-signaling {args:?} --print-config: {}", show(&out));
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn example_config_loads_and_documents_every_key() {
    let defaults = print_config(&[]);
    let example = print_config(&["--config", "config/deadsfu.example.yaml"]);
    // The example spells out the defaults: loading it changes nothing.
    assert_eq!(example, defaults);
    let text = std::fs::read_to_string(repo().join("config/deadsfu.example.yaml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for key in defaults.lines().filter_map(|l| l.split_once(':')).map(|(k, _)| k) {
        let at = lines
            .iter()
            .position(|l| l.starts_with(&format!("{key}:")))
            .unwrap_or_else(|| panic!("config/deadsfu.example.yaml lacks `{key}`"));
        assert!(at > 0 && lines[at - 1].starts_with('#'), "`{key}` has no comment above it");
    }
}
