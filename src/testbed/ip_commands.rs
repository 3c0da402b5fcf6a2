//! The `ip` (iproute2) commands a `--netns` testbed ([`super::netns`]) is built with: `ip`
//! in the root namespace or in a node's, `sysctl` in a namespace, a management veth, and the
//! management hub's link to the root namespace (the namespace of an interworking node that
//! hosts the controllers and managers: its veth to the root namespace, the root's route to
//! the testbed's /24 through it, and forwarding).

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use super::error::TestbedError;

/// Name of the management interface inside every node namespace.
pub const MGMT_INTERFACE: &str = "mgmt0";

/// A testbed operation error with `message`.
pub(super) fn failed(message: String) -> TestbedError {
    TestbedError::Operation(message)
}

/// Runs `ip <args>`; its stderr is the error.
pub(super) fn ip(args: &[&str]) -> Result<String, TestbedError> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| failed(format!("running ip {}: {e}", args.join(" "))))?;
    if !output.status.success() {
        return Err(failed(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `ip -n <namespace> <args>`.
pub(super) fn ip_in(namespace: &str, args: &[&str]) -> Result<String, TestbedError> {
    let mut all = vec!["-n", namespace];
    all.extend_from_slice(args);
    ip(&all)
}

/// `ip` arguments that add a management veth: `near` here, `mgmt0` in `namespace`.
pub(super) fn management_veth<'a>(near: &'a str, namespace: &'a str) -> [&'a str; 10] {
    [
        "link",
        "add",
        near,
        "type",
        "veth",
        "peer",
        "name",
        MGMT_INTERFACE,
        "netns",
        namespace,
    ]
}

/// `ip netns exec <namespace> sysctl -qw <setting>`.
fn sysctl_in(namespace: &str, setting: &str) -> Result<(), TestbedError> {
    let output = Command::new("ip")
        .args(["netns", "exec", namespace, "sysctl", "-qw", setting])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| failed(format!("running sysctl in {namespace}: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(failed(format!(
            "sysctl {setting} in {namespace}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// The hub's link to the root namespace: the root's end holds the root-side address and a
/// route to the testbed's /24 through the hub, which forwards to the nodes' management veths.
pub(super) fn create_hub(
    namespace: &str,
    root_interface: &str,
    root_address: Ipv4Addr,
    root_side_address: Ipv4Addr,
) -> Result<(), TestbedError> {
    let (root, root_side) = (root_address.to_string(), root_side_address.to_string());
    let ns = namespace;
    ip(&management_veth(root_interface, ns))?;
    ip(&[
        "addr",
        "add",
        &format!("{root_side}/32"),
        "peer",
        &format!("{root}/32"),
        "dev",
        root_interface,
    ])?;
    ip(&["link", "set", root_interface, "up"])?;
    ip_in(
        ns,
        &[
            "addr",
            "add",
            &format!("{root}/32"),
            "peer",
            &format!("{root_side}/32"),
            "dev",
            MGMT_INTERFACE,
        ],
    )?;
    ip_in(ns, &["link", "set", MGMT_INTERFACE, "up"])?;
    let block = Ipv4Addr::from(u32::from(root_address) & !0xff);
    ip(&[
        "route",
        "add",
        &format!("{block}/24"),
        "via",
        &root,
        "dev",
        root_interface,
    ])?;
    sysctl_in(ns, "net.ipv4.ip_forward=1")
}
