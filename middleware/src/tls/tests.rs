//! The TLS settings: the specification's precedence of variables, the errors at start, and the
//! server name each connection checks. Connections themselves are tried against a real
//! collector in `tests/tests/middleware_tls.rs`.

use std::path::{Path, PathBuf};

use http::Uri;

use super::connect::ServerName;
use super::{ClientTls, TlsError, is_https};

fn lookup(vars: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    let vars = vars.to_vec();
    move |name: &str| {
        vars.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
    }
}

#[test]
fn each_setting_takes_the_signals_variable_before_the_generic_one() {
    /// The variables, the signal, the CA file expected, and why.
    type Row<'a> = (
        &'a [(&'a str, &'a str)],
        Option<&'a str>,
        Option<&'a str>,
        &'a str,
    );
    let rows: &[Row<'_>] = &[
        (&[], None, None, "nothing set: system roots"),
        (
            &[("OTEL_EXPORTER_OTLP_CERTIFICATE", "/g.pem")],
            Some("TRACES"),
            Some("/g.pem"),
            "only the generic one: it counts for traces",
        ),
        (
            &[
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/g.pem"),
                ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/t.pem"),
            ],
            Some("TRACES"),
            Some("/t.pem"),
            "the signal's own wins",
        ),
        (
            &[
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/g.pem"),
                ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/t.pem"),
            ],
            None,
            Some("/g.pem"),
            "no signal (the health reporter, discovery): the generic one",
        ),
        (
            &[
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/g.pem"),
                ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "  "),
            ],
            Some("TRACES"),
            Some("/g.pem"),
            "an empty signal variable counts as unset",
        ),
    ];
    for (vars, signal, expected, reason) in rows {
        let vars: Vec<(&'static str, &'static str)> =
            vars.iter().map(|(k, v)| (leak(k), leak(v))).collect();
        let tls = ClientTls::from_lookup(lookup(&vars), *signal);
        assert_eq!(tls.ca(), expected.map(Path::new), "{reason}");
    }
}

fn leak(text: &str) -> &'static str {
    Box::leak(text.to_owned().into_boxed_str())
}

#[test]
fn the_client_certificate_and_key_are_read_independently() {
    let tls = ClientTls::from_lookup(
        lookup(&[
            (
                "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
                "/t-cert.pem",
            ),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/g-cert.pem"),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/g-key.pem"),
        ]),
        Some("TRACES"),
    );
    assert_eq!(
        tls,
        ClientTls::new().client_identity("/t-cert.pem", "/g-key.pem"),
        "the traces certificate with the generic key: each variable has its own precedence"
    );
}

/// A CA and a leaf it signed, as PEM files in a temporary directory.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn leaf(&self) -> (PathBuf, PathBuf) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (
            self.write("cert.pem", &made.cert.pem()),
            self.write("key.pem", &made.signing_key.serialize_pem()),
        )
    }
}

#[test]
fn files_that_cannot_be_used_are_errors_at_start_naming_them() {
    let files = Files::new();
    let (cert, key) = files.leaf();
    let missing = files.dir.path().join("missing.pem");
    let not_pem = files.write("notes.txt", "not a certificate");
    let rows: Vec<(ClientTls, &str, &str)> = vec![
        (
            ClientTls::new().ca_file(&missing),
            "missing.pem",
            "a CA file that does not exist",
        ),
        (
            ClientTls::new().ca_file(&not_pem),
            "no CERTIFICATE block",
            "a CA file without a certificate",
        ),
        (
            ClientTls::new()
                .ca_file(&cert)
                .client_identity(&cert, &missing),
            "the client key",
            "a client key that does not exist",
        ),
        (
            ClientTls::new()
                .ca_file(&cert)
                .client_identity(&not_pem, &key),
            "the client certificate",
            "a client certificate that is not PEM",
        ),
        (
            ClientTls::new()
                .ca_file(&cert)
                .client_identity(&cert, &cert),
            "the client key",
            "a certificate given as the key",
        ),
    ];
    for (tls, expected, reason) in rows {
        let error = tls.load().expect_err(reason).to_string();
        assert!(error.contains(expected), "{reason}: {error}");
    }
    let half = ClientTls::from_lookup(
        lookup(&[(
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            leak(cert.to_str().unwrap()),
        )]),
        None,
    );
    assert!(
        matches!(half.load(), Err(TlsError::HalfIdentity("the key"))),
        "a certificate without its key is refused, not sent without"
    );
    let good = ClientTls::new().ca_file(&cert).client_identity(&cert, &key);
    assert!(good.load().is_ok(), "a CA, a certificate and its key load");
}

#[test]
fn each_connection_checks_the_name_it_should() {
    let rows: &[(ServerName, Option<&str>, &str, &str, &str)] = &[
        (
            ServerName::Url,
            None,
            "https://collector.internal:4317",
            "collector.internal",
            "a collector: the URL's host",
        ),
        (
            ServerName::Url,
            None,
            "https://127.0.0.1:4317",
            "127.0.0.1",
            "a collector by address: the address (its certificate names it)",
        ),
        (
            ServerName::EndpointOr("inventory".to_owned()),
            None,
            "https://10.0.0.7:8443",
            "inventory",
            "an endpoint registered by address: the service's name",
        ),
        (
            ServerName::EndpointOr("inventory".to_owned()),
            None,
            "https://[::1]:8443",
            "inventory",
            "an IPv6 endpoint: the service's name",
        ),
        (
            ServerName::EndpointOr("inventory".to_owned()),
            None,
            "https://inventory-2.pods.local:8443",
            "inventory-2.pods.local",
            "an endpoint registered by name: its own name",
        ),
        (
            ServerName::EndpointOr("inventory".to_owned()),
            Some("inventory.mesh"),
            "https://inventory-2.pods.local:8443",
            "inventory.mesh",
            "a name set in the settings wins",
        ),
    ];
    for (rule, fixed, uri, expected, reason) in rows {
        let uri: Uri = uri.parse().unwrap();
        let name = rule.resolve(*fixed, &uri).expect(reason);
        assert_eq!(name.to_str(), *expected, "{reason}");
    }
}

#[test]
fn only_https_urls_ask_for_tls() {
    for (url, expected, reason) in [
        ("https://c:4318", true, "https"),
        ("HTTPS://c:4318", true, "the scheme in any case"),
        (" https://c:4318", true, "leading blanks"),
        ("http://c:4318", false, "plain http"),
        ("c:4317", false, "no scheme: the caller decides first"),
    ] {
        assert_eq!(is_https(url), expected, "{reason}");
    }
}
