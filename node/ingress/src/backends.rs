//! Backends by name: a Service port (by number or name) resolved to its ready endpoints, one shared
//! `Target` per Service port however many rules name it, or the reason it cannot answer.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddrV4;
use std::sync::Arc;

use capstan_proxy::model;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::table::Target;

/// A Service port as a rule names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    Number(i32),
    Name(String),
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(n) => f.write_str(n),
        }
    }
}

/// The Services and their EndpointSlices, and the targets made so far.
#[derive(Debug)]
pub struct Backends<'a> {
    services: HashMap<(&'a str, &'a str), &'a Service>,
    slices: BTreeMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
    made: HashMap<String, Arc<Target>>,
}

impl<'a> Backends<'a> {
    pub fn new(services: impl IntoIterator<Item = &'a Service>, slices: impl IntoIterator<Item = &'a EndpointSlice>) -> Backends<'a> {
        let services = services
            .into_iter()
            .map(|s| {
                let ns = s.metadata.namespace.as_deref().unwrap_or("default");
                ((ns, s.metadata.name.as_deref().unwrap_or_default()), s)
            })
            .collect();
        Backends {
            services,
            slices: model::by_service(slices),
            made: HashMap::new(),
        }
    }

    /// The target for port `port` of Service `namespace/name`; its endpoints are an error saying
    /// why when the Service or port does not exist.
    pub fn service(&mut self, namespace: &str, name: &str, port: &PortRef) -> Arc<Target> {
        let label = format!("{namespace}/{name}:{port}");
        if let Some(t) = self.made.get(&label) {
            return t.clone();
        }
        let endpoints = self.endpoints(namespace, name, port);
        let target = Arc::new(Target::new(label.clone(), endpoints));
        self.made.insert(label, target.clone());
        target
    }

    /// A target that cannot answer, for `why`.
    pub fn broken(&mut self, label: String, why: String) -> Arc<Target> {
        Arc::new(Target::new(label, Err(why)))
    }

    fn endpoints(&self, namespace: &str, name: &str, port: &PortRef) -> Result<Vec<SocketAddrV4>, String> {
        let service = self
            .services
            .get(&(namespace, name))
            .ok_or_else(|| format!("service {namespace}/{name} does not exist"))?;
        let service_port = service
            .spec
            .as_ref()
            .and_then(|s| {
                s.ports.iter().flatten().find(|sp| match port {
                    PortRef::Name(n) => sp.name.as_deref() == Some(n.as_str()),
                    PortRef::Number(n) => sp.port == *n,
                })
            })
            .ok_or_else(|| format!("service {namespace}/{name} has no port {port}"))?;
        let slices = self.slices.get(&(namespace, name)).map(Vec::as_slice).unwrap_or_default();
        Ok(model::tcp_backends(slices, service_port.name.as_deref())
            .into_iter()
            .map(|(ip, port)| SocketAddrV4::new(ip, port))
            .collect())
    }
}
