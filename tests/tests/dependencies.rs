//! The dependency tree holds one version of each OpenTelemetry crate, one `arrow` (DataFusion's)
//! and one `tonic`: two copies of `opentelemetry` mean two `Context` types that do not see each
//! other's spans, and two of the others mean duplicate wire types that do not convert.

use std::collections::BTreeMap;

#[derive(serde::Deserialize)]
struct Lock {
    package: Vec<Package>,
}

#[derive(serde::Deserialize)]
struct Package {
    name: String,
    version: String,
}

#[test]
fn one_version_of_each_opentelemetry_crate_arrow_and_tonic() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock");
    let text = std::fs::read_to_string(path).expect("the workspace's Cargo.lock");
    let lock: Lock = toml::from_str(&text).expect("a Cargo.lock");
    let mut versions: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for package in &lock.package {
        let watched = package.name.starts_with("opentelemetry")
            || package.name == "tracing-opentelemetry"
            || package.name == "arrow"
            || package.name == "tonic"
            || package.name == "prost";
        if watched {
            versions
                .entry(&package.name)
                .or_default()
                .push(&package.version);
        }
    }
    assert!(
        versions.contains_key("opentelemetry"),
        "the lock file lists opentelemetry"
    );
    let duplicated: Vec<_> = versions.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(
        duplicated.is_empty(),
        "more than one version in the tree: {duplicated:?}"
    );
    let otel_minor = |version: &str| version.rsplit_once('.').map(|(minor, _)| minor.to_owned());
    let minors: std::collections::BTreeSet<_> = versions
        .iter()
        .filter(|(name, _)| name.starts_with("opentelemetry"))
        .filter_map(|(_, v)| otel_minor(v[0]))
        .collect();
    assert_eq!(
        minors.len(),
        1,
        "the opentelemetry crates are one release: {versions:?}"
    );
}
