//! The capabilities a server announces in its hello and lists in `netconf-state`.

use crate::netconf::server::NetconfServer;
use crate::yang;

/// The server's capabilities.
pub fn capabilities(_server: &NetconfServer) -> Vec<String> {
    let mut caps: Vec<String> = [
        crate::netconf::BASE_1_0,
        crate::netconf::BASE_1_1,
        "urn:ietf:params:netconf:capability:writable-running:1.0",
        "urn:ietf:params:netconf:capability:candidate:1.0",
        "urn:ietf:params:netconf:capability:confirmed-commit:1.0",
        "urn:ietf:params:netconf:capability:confirmed-commit:1.1",
        "urn:ietf:params:netconf:capability:rollback-on-error:1.0",
        "urn:ietf:params:netconf:capability:validate:1.0",
        "urn:ietf:params:netconf:capability:validate:1.1",
        "urn:ietf:params:netconf:capability:xpath:1.0",
        "urn:ietf:params:netconf:capability:notification:1.0",
        "urn:ietf:params:netconf:capability:interleave:1.0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // RFC 8526: YANG 1.1 modules are announced through the YANG library.
    caps.push(format!(
        "urn:ietf:params:netconf:capability:yang-library:1.1?revision=2019-01-04&content-id={}",
        yang::content_id()
    ));
    for module in yang::context().modules(false) {
        if !module.is_implemented() {
            continue;
        }
        let mut cap = format!("{}?module={}", module.namespace(), module.name());
        if let Some(revision) = module.revision() {
            cap.push_str(&format!("&revision={revision}"));
        }
        caps.push(cap);
    }
    caps
}
