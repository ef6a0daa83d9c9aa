//! Fleet services as configuration: the form a service takes in etcd, and the rules that
//! join the fleet's services to a host's own file.
//!
//! A published service is one self-contained document, `{"defaults": …, "services": [one]}`
//! as JSON (which is YAML), so a daemon checks it with the very parser and rules that
//! `check` uses, and an error in it is located (`etcd:/failoverd/desired/services/NAME:
//! line:column`). Joining then adds only what spans both sides: a name or a VIP defined
//! twice, a backend at the other side's VIP, the datapath's sizes.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use failoverd_shared::VipKey;

use super::{
    error::ROOT_KEY,
    issues::Issues,
    locate::{Locator, Position, Target},
    lower::kernel_limits,
    BackendAddress, Config, ConfigError, ServiceConfig,
};

/// Top-level keys a published services file may hold; the others are host-local.
pub const PUBLISHABLE_KEYS: [&str; 2] = ["defaults", "services"];

/// Splits a checked services file into one document per service, in file order, as
/// `(name, JSON text)`. `config` is what [`super::parse`] made of `text`.
///
/// Each document is parsed back and must give exactly the service `config` holds: what
/// YAML can say and JSON cannot (tags, say) is refused here, not found on every host.
pub fn service_documents(
    text: &str,
    config: &Config,
) -> Result<Vec<(String, String)>, ConfigError> {
    let source = &config.source;
    let invalid = |pos: Position, key: String, message: String| ConfigError::Invalid {
        file: source.clone(),
        line: pos.line,
        column: pos.column,
        key,
        message,
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let value: serde_json::Value = super::from_yaml(text)
        .map_err(|e| invalid(Position::START, ROOT_KEY.to_owned(), e.to_string()))?;
    let Some(map) = value.as_object() else {
        return Err(invalid(
            Position::START,
            ROOT_KEY.to_owned(),
            "not a mapping".to_owned(),
        ));
    };
    if let Some(local) = map.keys().find(|k| !PUBLISHABLE_KEYS.contains(&k.as_str())) {
        let pos = Locator::new(text).find(local, Target::Key);
        return Err(invalid(
            pos,
            local.clone(),
            format!(
                "`{local}` is host-local and is not published: a fleet services file holds only `defaults` and `services`"
            ),
        ));
    }
    let defaults = map.get("defaults").cloned();
    let services = map
        .get("services")
        .and_then(|s| s.as_array())
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::with_capacity(services.len());
    for (i, (raw, service)) in services.into_iter().zip(&config.services).enumerate() {
        let mut doc = serde_json::Map::new();
        if let Some(d) = &defaults {
            doc.insert("defaults".into(), d.clone());
        }
        doc.insert("services".into(), serde_json::Value::Array(vec![raw]));
        let json = serde_json::to_string_pretty(&serde_json::Value::Object(doc))
            .expect("a JSON value always serializes");
        let back = super::parse(&json, source).ok();
        let same = back
            .as_ref()
            .and_then(|c| c.services.first())
            .is_some_and(|s| s == service);
        if !same {
            let path = format!("services[{i}]");
            let pos = Locator::new(text).find(&path, Target::Value);
            return Err(invalid(
                pos,
                path,
                format!(
                    "service `{}` does not read back the same from its published (JSON) form; write it without YAML tags or anchors",
                    service.name
                ),
            ));
        }
        out.push((service.name.clone(), json));
    }
    Ok(out)
}

/// Checks one fleet service document (the value of `key` in etcd) like a config file.
pub fn parse_service(key: &str, text: &str) -> Result<Arc<ServiceConfig>, ConfigError> {
    let source = PathBuf::from(format!("etcd:{key}"));
    let mut config = super::parse(text, &source)?;
    let expected = key.rsplit('/').next().unwrap_or(key);
    match config.services.len() {
        1 if config.services[0].name == expected => Ok(config.services.remove(0)),
        n => Err(ConfigError::Invalid {
            file: source,
            line: 1,
            column: 1,
            key: "services".to_owned(),
            message: format!(
                "a fleet service key holds exactly one service named as its key (`{expected}`); this one holds {n}{}",
                config
                    .services
                    .first()
                    .map(|s| format!(", the first named `{}`", s.name))
                    .unwrap_or_default()
            ),
        }),
    }
}

/// `local` with the fleet's services after its own, or the first conflict, located in
/// the local file (which is read again only to locate it) or in the fleet service's key.
///
/// `fleet` is `(etcd key, service)`.
pub fn join(local: &Config, fleet: &[(String, Arc<ServiceConfig>)]) -> Result<Config, ConfigError> {
    let mut found: Option<(Side, String, String)> = None;
    let names: HashMap<&str, usize> = local
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let vips: HashMap<VipKey, usize> = local
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.vip().key(), i))
        .collect();
    let vip_addrs = |services: &mut dyn Iterator<Item = &ServiceConfig>| {
        services.map(|s| s.vip).collect::<Vec<SocketAddr>>()
    };
    let local_vips = vip_addrs(&mut local.services.iter().map(|s| &**s));
    let fleet_vips = vip_addrs(&mut fleet.iter().map(|(_, s)| &**s));
    for (key, s) in fleet {
        if let Some(&i) = names.get(s.name.as_str()) {
            found = Some((
                Side::Local,
                format!("services[{i}].name"),
                format!(
                    "service name `{}` is also a fleet service (etcd key {key}); a name is defined either here or in the fleet",
                    s.name
                ),
            ));
            break;
        }
        if let Some(&i) = vips.get(&s.vip().key()) {
            found = Some((
                Side::Local,
                format!("services[{i}].vip"),
                format!(
                    "vip {}/{} is also the VIP of fleet service `{}` (etcd key {key}); a VIP is defined either here or in the fleet",
                    local.services[i].vip, local.services[i].protocol, s.name
                ),
            ));
            break;
        }
        if let Some((j, b)) = at_a_vip(s, &local_vips) {
            found = Some((
                Side::Fleet(key.clone()),
                format!("services[0].backends[{j}].address"),
                format!(
                    "backend {b} of fleet service `{}` is a VIP of this host's file: connects to it would come back into a VIP",
                    s.name
                ),
            ));
            break;
        }
    }
    if found.is_none() {
        for (i, s) in local.services.iter().enumerate() {
            if let Some((j, b)) = at_a_vip(s, &fleet_vips) {
                found = Some((
                    Side::Local,
                    format!("services[{i}].backends[{j}].address"),
                    format!(
                        "backend {b} is the VIP of a fleet service: connects to it would come back into a VIP"
                    ),
                ));
                break;
            }
        }
    }
    let mut joined = local.clone();
    joined
        .services
        .extend(fleet.iter().map(|(_, s)| Arc::clone(s)));
    if found.is_none() {
        let mut issues = Issues::default();
        kernel_limits(&joined.services, &mut issues);
        if let Some(issue) = issues.into_vec().into_iter().next() {
            found = Some((
                Side::Local,
                ROOT_KEY.to_owned(),
                format!(
                    "with the fleet's {} services: {}",
                    fleet.len(),
                    issue.message
                ),
            ));
        }
    }
    match found {
        None => Ok(joined),
        Some((Side::Local, path, message)) => Err(located(&local.source, &path, message)),
        Some((Side::Fleet(key), path, message)) => Err(ConfigError::Invalid {
            file: PathBuf::from(format!("etcd:{key}")),
            line: 1,
            column: 1,
            key: path,
            message,
        }),
    }
}

/// Which side of a join a conflict is reported on.
enum Side {
    Local,
    Fleet(String),
}

/// The first backend of `s` whose literal address is one of `vips`.
fn at_a_vip(s: &ServiceConfig, vips: &[SocketAddr]) -> Option<(usize, SocketAddr)> {
    s.backends
        .iter()
        .enumerate()
        .find_map(|(j, b)| match b.address {
            BackendAddress::Ip(a)
                if vips.contains(&SocketAddr::new(a.ip().to_canonical(), a.port())) =>
            {
                Some((j, a))
            }
            _ => None,
        })
}

/// An error at `path` of the file `source`, located by reading it again (at its start if
/// it cannot be read: the message still names the key).
fn located(source: &Path, path: &str, message: String) -> ConfigError {
    let pos = std::fs::read_to_string(source)
        .map(|text| Locator::new(&text).find(path, Target::Value))
        .unwrap_or(Position::START);
    ConfigError::Invalid {
        file: source.to_path_buf(),
        line: pos.line,
        column: pos.column,
        key: path.to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
defaults:
  health: { kind: tcp, interval: 1s }
services:
  - name: db
    vip: 10.96.0.10:5432
    backends:
      - { name: a, address: '10.0.0.1:5432' }
  - name: web
    vip: 10.96.0.80:80
    backends: [ { address: 10.0.0.2:80 } ]
";

    fn parsed(text: &str, file: &str) -> Config {
        super::super::parse(text, Path::new(file)).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn each_service_reads_back_the_same_from_its_document() {
        let config = parsed(FILE, "s.yaml");
        let docs = service_documents(FILE, &config).unwrap();
        assert_eq!(docs.len(), 2);
        for ((name, text), service) in docs.iter().zip(&config.services) {
            let key = format!("/failoverd/desired/services/{name}");
            assert_eq!(&parse_service(&key, text).unwrap(), service);
        }
    }

    #[test]
    fn a_host_local_section_is_not_published() {
        let text = format!("control: {{ socket: /run/x.sock }}\n{FILE}");
        let e = service_documents(&text, &parsed(&text, "s.yaml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("s.yaml:1:1: control: `control` is host-local"),
            "{e}"
        );
    }

    #[test]
    fn a_key_must_hold_the_service_it_names() {
        let config = parsed(FILE, "s.yaml");
        let docs = service_documents(FILE, &config).unwrap();
        let e = parse_service("/failoverd/desired/services/other", &docs[0].1).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("etcd:/failoverd/desired/services/other:1:1"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_fleet_document_is_located_in_its_key() {
        let e = parse_service(
            "/f/desired/services/db",
            "{\n  \"services\": [\n    { \"name\": \"db\", \"vip\": \"10.0.0.1:0\", \"backends\": [ { \"address\": \"10.0.0.2:1\" } ] }\n  ]\n}",
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("etcd:/f/desired/services/db:3:"),
            "{e}"
        );
    }

    fn fleet_of(text: &str) -> Vec<(String, Arc<ServiceConfig>)> {
        parsed(text, "fleet.yaml")
            .services
            .into_iter()
            .map(|s| (format!("/f/desired/services/{}", s.name), s))
            .collect()
    }

    fn local_file(text: &str) -> (std::path::PathBuf, Config) {
        let dir = std::env::temp_dir().join(format!(
            "fo-join-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("local.yaml");
        std::fs::write(&path, text).unwrap();
        let config = super::super::parse(text, &path).unwrap();
        (dir, config)
    }

    #[test]
    fn fleet_services_join_after_the_local_ones() {
        let (dir, local) = local_file("services:\n  - name: own\n    vip: 10.96.1.1:80\n    backends: [ { address: 10.0.1.1:80 } ]\n");
        let joined = join(&local, &fleet_of(FILE)).unwrap();
        let names: Vec<&str> = joined.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["own", "db", "web"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_vip_both_local_and_fleet_is_refused_in_the_local_file() {
        let (dir, local) = local_file("services:\n  - name: own\n    vip: 10.96.0.80:80\n    backends: [ { address: 10.0.1.1:80 } ]\n");
        let e = join(&local, &fleet_of(FILE)).unwrap_err().to_string();
        assert!(e.contains("local.yaml:3:10: services[0].vip: vip 10.96.0.80:80/tcp is also the VIP of fleet service `web`"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_name_both_local_and_fleet_is_refused_in_the_local_file() {
        let (dir, local) = local_file("services:\n  - name: db\n    vip: 10.96.9.9:80\n    backends: [ { address: 10.0.1.1:80 } ]\n");
        let e = join(&local, &fleet_of(FILE)).unwrap_err().to_string();
        assert!(
            e.contains(
                "local.yaml:2:11: services[0].name: service name `db` is also a fleet service"
            ),
            "{e}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_fleet_backend_at_a_local_vip_is_refused() {
        let (dir, local) = local_file("services:\n  - name: own\n    vip: 10.0.0.2:80\n    backends: [ { address: 10.0.1.1:80 } ]\n");
        let e = join(&local, &fleet_of(FILE)).unwrap_err().to_string();
        assert!(
            e.starts_with("etcd:/f/desired/services/web:1:1: services[0].backends[0].address"),
            "{e}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
