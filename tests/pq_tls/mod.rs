//! Post-quantum TLS on every reference point (issue 14, part 7): on the two-domain testbed,
//! a client with the right certificate negotiates the hybrid key exchange X25519MLKEM768 at
//! ETSI GS QKD 014 (KSA), the KMA, Kxi (a KM of the other domain), Cxi (the peer controller)
//! and Mxi (the peer manager); a client offering only X25519 still connects (fallback).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::aws_lc_rs::kx_group;
use rustls::crypto::SupportedKxGroup;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use rustls::NamedGroup;

use super::common::Bed;

/// A TLS client of `addr` (`host:port` or an `https://` URL) presenting `cert`/`key`,
/// trusting `cas`, offering `groups`; returns the negotiated group.
async fn negotiated(
    addr: &str,
    (cert, key): (&Path, &Path),
    cas: &[PathBuf],
    groups: &[&'static dyn SupportedKxGroup],
) -> NamedGroup {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        for c in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let provider = rustls::crypto::CryptoProvider {
        kx_groups: groups.to_vec(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
        .unwrap();
    let addr = addr.trim_start_matches("https://").trim_end_matches('/');
    let socket: std::net::SocketAddr = addr.parse().unwrap();
    let tcp = tokio::net::TcpStream::connect(socket).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::from(socket.ip()), tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS to {addr}: {e}"));
    let (_, connection) = tls.get_ref();
    assert!(connection.peer_certificates().is_some());
    connection
        .negotiated_key_exchange_group()
        .expect("a TLS 1.3 key exchange")
        .name()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reference_point_negotiates_x25519mlkem768() {
    let bed = Bed::up("two-domain-gwn.toml");
    let pki = bed.dir.join("pki");
    let id = |stem: &str| {
        (
            pki.join(format!("{stem}.crt")),
            pki.join(format!("{stem}.key")),
        )
    };
    let ca_a = bed.endpoints.domains["A"].ca_cert.clone();
    let ca_b = bed.endpoints.domains["B"].ca_cert.clone();
    let sae = bed.endpoints.sae_tls("sae-a1-1").unwrap();
    let a1 = bed.endpoints.node("a1").unwrap();
    let a2 = bed.endpoints.node("a2").unwrap();
    let gb1 = bed.endpoints.node("gb1").unwrap();
    let cxi_a = bed.endpoints.controller("A").unwrap().cxi.clone().unwrap();
    let mxi_a = bed.endpoints.manager("A").unwrap().mxi.clone();
    let km_a1 = id("km-a1");
    let km_ga1 = id("km-ga1");
    let controller_b = id("controller-B");
    let manager_b = id("manager-B");
    // (reference point, server, client identity, trusted CA)
    let points: Vec<(&str, String, (&Path, &Path), &PathBuf)> = vec![
        ("ETSI 014", a1.etsi014.clone(), (&sae.cert, &sae.key), &ca_a),
        ("KMA", a2.kma.clone(), (&km_a1.0, &km_a1.1), &ca_a),
        ("Kxi", gb1.kma.clone(), (&km_ga1.0, &km_ga1.1), &ca_b),
        ("Cxi", cxi_a, (&controller_b.0, &controller_b.1), &ca_a),
        ("Mxi", mxi_a, (&manager_b.0, &manager_b.1), &ca_a),
    ];
    let classic: &[&'static dyn SupportedKxGroup] = &[kx_group::X25519];
    for (point, addr, client, ca) in points {
        let cas = std::slice::from_ref(ca);
        let group = negotiated(&addr, client, cas, qkdni::tls::KX_GROUPS).await;
        assert_eq!(group, NamedGroup::X25519MLKEM768, "{point} at {addr}");
        // a client without ML-KEM still gets in, with the classic group
        let group = negotiated(&addr, client, cas, classic).await;
        assert_eq!(group, NamedGroup::X25519, "{point} fallback at {addr}");
    }
    // the servers count their handshakes by group (KM metrics)
    let metrics = a1.metrics.clone().expect("metrics URL");
    // plain HTTP (the client's TLS settings go unused)
    let text = bed
        .anonymous_https()
        .get(&metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("qkdni_km_tls_handshakes_total{point=\"etsi014\",group=\"X25519MLKEM768\"}"),
        "{text}"
    );
    assert!(
        text.contains("qkdni_km_tls_handshakes_total{point=\"etsi014\",group=\"X25519\"}"),
        "{text}"
    );
}
