//! The layout's written rules, checked against the code: the import rules of
//! `docs/architecture.md` over the collector's and the middleware's sources (read with `syn`,
//! as the compiler reads them, not by matching lines), and every path the document names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// The rules between the collector's top-level modules, each with its reason: `(from, to)`
/// means that no file under `from` names anything under `to`; `*` is every module.
const RULES: &[(&str, &str, &str)] = &[
    (
        "ingest",
        "serve",
        "what the collector takes in never waits on, or changes with, what it answers",
    ),
    (
        "store",
        "graph",
        "the store keeps spans; what is learned from them is built beside it, not in it",
    ),
    (
        "*",
        "app",
        "the phases and the settings' assembly are the top: only the binary and the crate's \
         public surface (lib.rs) reach them",
    ),
    (
        "util",
        "*",
        "the shared pieces (cap, clock, reuse, tasks, units) stand on nothing of the collector",
    ),
    (
        "net",
        "ingest",
        "the listeners' machinery serves the receivers and the query API alike",
    ),
    (
        "net",
        "serve",
        "the listeners' machinery serves the receivers and the query API alike",
    ),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// Where one module names another: the file and the module path named.
#[derive(Debug, Clone)]
struct Import {
    file: PathBuf,
    /// The module (with any inline modules) the name is written in.
    from: Vec<String>,
    /// The path named, made absolute from the crate root (`crate::`, `super::`, `self::`).
    to: Vec<String>,
}

/// Every `.rs` file under `src` but the binaries' own (`src/bin/`), with its module path.
fn sources(src: &Path) -> Vec<(PathBuf, Vec<String>)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("a source folder") {
            let path = entry.expect("a folder entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|file| !file.starts_with(src.join("bin")))
        .map(|file| {
            let relative = file.strip_prefix(src).expect("under src");
            let mut module: Vec<String> = relative
                .with_extension("")
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            (file, module)
        })
        .collect()
}

/// Whether `attrs` hold `#[cfg(test)]` (test-only code may reach across the rules).
fn test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr
                .parse_args::<syn::Meta>()
                .is_ok_and(|meta| meta.path().is_ident("test"))
    })
}

/// Collects the crate-relative paths a file names, outside test-only code and doc comments.
struct Names<'a> {
    file: &'a Path,
    module: Vec<String>,
    roots: &'a mut BTreeSet<String>,
    found: &'a mut Vec<Import>,
}

impl Names<'_> {
    fn named(&mut self, segments: Vec<String>) {
        let Some(first) = segments.first() else {
            return;
        };
        let to = match first.as_str() {
            "crate" => segments[1..].to_vec(),
            "self" => [self.module.clone(), segments[1..].to_vec()].concat(),
            "super" => {
                let mut base = self.module.clone();
                let mut rest = &segments[..];
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                [base, rest.to_vec()].concat()
            }
            other => {
                self.roots.insert(other.to_owned());
                return;
            }
        };
        self.found.push(Import {
            file: self.file.to_path_buf(),
            from: self.module.clone(),
            to,
        });
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(path) => {
                prefix.push(path.ident.to_string());
                self.use_tree(prefix, &path.tree);
                prefix.pop();
            }
            syn::UseTree::Name(name) => {
                let mut full = prefix.clone();
                if name.ident != "self" {
                    full.push(name.ident.to_string());
                }
                self.named(full);
            }
            syn::UseTree::Rename(rename) => {
                let mut full = prefix.clone();
                if rename.ident != "self" {
                    full.push(rename.ident.to_string());
                }
                self.named(full);
            }
            syn::UseTree::Glob(_) => self.named(prefix.clone()),
            syn::UseTree::Group(group) => {
                for tree in &group.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Names<'_> {
    fn visit_attribute(&mut self, _: &'ast syn::Attribute) {
        // Doc comments link where they like; attributes name no module.
    }

    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Const(i) => &i.attrs,
            syn::Item::Enum(i) => &i.attrs,
            syn::Item::ExternCrate(i) => &i.attrs,
            syn::Item::Fn(i) => &i.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Macro(i) => &i.attrs,
            syn::Item::Mod(i) => &i.attrs,
            syn::Item::Static(i) => &i.attrs,
            syn::Item::Struct(i) => &i.attrs,
            syn::Item::Trait(i) => &i.attrs,
            syn::Item::Type(i) => &i.attrs,
            syn::Item::Union(i) => &i.attrs,
            syn::Item::Use(i) => &i.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if !test_only(attrs) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_impl_item(&mut self, item: &'ast syn::ImplItem) {
        let attrs = match item {
            syn::ImplItem::Const(i) => &i.attrs,
            syn::ImplItem::Fn(i) => &i.attrs,
            syn::ImplItem::Type(i) => &i.attrs,
            syn::ImplItem::Macro(i) => &i.attrs,
            _ => return syn::visit::visit_impl_item(self, item),
        };
        if !test_only(attrs) {
            syn::visit::visit_impl_item(self, item);
        }
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if item.content.is_some() {
            self.module.push(item.ident.to_string());
            syn::visit::visit_item_mod(self, item);
            self.module.pop();
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.named(
            path.segments
                .iter()
                .map(|segment| segment.ident.to_string())
                .collect(),
        );
        syn::visit::visit_path(self, path);
    }
}

/// A crate's sources: its modules, what they name of each other, and the first segments of
/// the other paths they write (other crates, and names in scope).
struct Crate {
    modules: BTreeSet<Vec<String>>,
    imports: Vec<Import>,
    roots: BTreeSet<String>,
}

fn read_crate(src: &Path) -> Crate {
    let mut modules = BTreeSet::new();
    let mut imports = Vec::new();
    let mut roots = BTreeSet::new();
    for (file, module) in sources(src) {
        let text = std::fs::read_to_string(&file).expect("a source file");
        let parsed = syn::parse_file(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", file.display()));
        // `tests.rs` files are test modules (declared under `#[cfg(test)]`).
        if file.file_name().is_some_and(|name| name == "tests.rs") {
            modules.insert(module);
            continue;
        }
        modules.insert(module.clone());
        Names {
            file: &file,
            module,
            roots: &mut roots,
            found: &mut imports,
        }
        .visit_file(&parsed);
    }
    Crate {
        modules,
        imports,
        roots,
    }
}

/// Whether `module` is `rule` (a top-level module's name, or `*` for any).
fn matches(rule: &str, module: &[String]) -> bool {
    rule == "*" || module.first().is_some_and(|top| top == rule)
}

/// What in `imports` breaks a rule of [`RULES`], one line each.
fn broken_rules(imports: &[Import]) -> Vec<String> {
    let mut broken = Vec::new();
    for (from, to, why) in RULES {
        for import in imports {
            // The crate root (lib.rs) is the public surface: it re-exports from `app`.
            if import.from.is_empty() || import.to.is_empty() {
                continue;
            }
            let same_top = import.from.first() == import.to.first();
            if matches(from, &import.from) && matches(to, &import.to) && !same_top {
                broken.push(format!(
                    "{} ({}) names {}: {from} never imports {to}: {why}",
                    import.file.display(),
                    import.from.join("::"),
                    import.to.join("::"),
                ));
            }
        }
    }
    broken.sort();
    broken.dedup();
    broken
}

#[test]
fn the_collector_keeps_its_import_rules() {
    let src = workspace().join("collector/src");
    let krate = read_crate(&src);
    assert!(
        krate.imports.len() > 500,
        "the reader found only {} names: it no longer reads the sources",
        krate.imports.len()
    );
    let broken = broken_rules(&krate.imports);
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// The names `source`, the file of module `module`, makes (crate-relative, absolute).
fn names_in(module: &[&str], source: &str) -> Vec<String> {
    let parsed = syn::parse_file(source).expect("the example parses");
    let (mut roots, mut found) = (BTreeSet::new(), Vec::new());
    Names {
        file: Path::new("example.rs"),
        module: module.iter().map(|s| s.to_string()).collect(),
        roots: &mut roots,
        found: &mut found,
    }
    .visit_file(&parsed);
    found.into_iter().map(|i| i.to.join("::")).collect()
}

#[test]
fn the_reader_resolves_paths_and_skips_tests_and_docs() {
    let source = r#"
        //! Links [`crate::serve`] in a doc comment.
        use super::pool::Pool;
        use crate::store::{log::Wal, view::{self, View}};
        use self::inner::Thing;
        fn f() { let _ = crate::graph::weights::rule::apply(); super::super::util::clock::now(); }
        #[cfg(test)]
        mod tests { use crate::serve::sql::QueryEngine; }
        #[cfg(test)]
        fn only_in_tests() { crate::app::start(); }
    "#;
    assert_eq!(
        names_in(&["ingest", "grpc"], source),
        [
            "ingest::pool::Pool",
            "store::log::Wal",
            "store::view",
            "store::view::View",
            "ingest::grpc::inner::Thing",
            "graph::weights::rule::apply",
            "util::clock::now",
        ],
        "super from ingest::grpc is ingest; test-only items and doc links are not names"
    );
}

#[test]
fn a_rule_is_broken_only_across_the_modules_it_names() {
    let import = |from: &[&str], to: &[&str]| Import {
        file: PathBuf::from("x.rs"),
        from: from.iter().map(|s| s.to_string()).collect(),
        to: to.iter().map(|s| s.to_string()).collect(),
    };
    // (from, to, broken, why)
    let table: &[(&[&str], &[&str], bool, &str)] = &[
        (
            &["ingest", "grpc"],
            &["serve", "sql", "QueryEngine"],
            true,
            "ingest never imports serve",
        ),
        (
            &["serve", "query"],
            &["ingest", "grpc", "RETRY_AFTER"],
            false,
            "serve may import ingest",
        ),
        (
            &["store", "view"],
            &["graph", "registry"],
            true,
            "store never imports graph",
        ),
        (
            &["graph", "weights"],
            &["app", "config", "Config"],
            true,
            "nothing imports app",
        ),
        (
            &["app", "listeners"],
            &["app", "reload", "Caps"],
            false,
            "app may import itself",
        ),
        (
            &[],
            &["app", "Collector"],
            false,
            "the crate root re-exports app",
        ),
        (
            &["util", "cap"],
            &["metrics", "Metrics"],
            true,
            "util imports nothing of the collector",
        ),
        (
            &["net", "access"],
            &["serve", "query"],
            true,
            "net never imports serve",
        ),
        (
            &["ingest", "mod"],
            &["ingest", "pool", "Pool"],
            false,
            "a module names its own children",
        ),
    ];
    for (from, to, broken, why) in table {
        assert_eq!(
            !broken_rules(&[import(from, to)]).is_empty(),
            *broken,
            "{why}"
        );
    }
}

/// The edges between sibling modules (children of one parent), with a file that makes each.
fn sibling_edges(krate: &Crate) -> BTreeMap<Vec<String>, BTreeMap<(String, String), PathBuf>> {
    let mut edges: BTreeMap<Vec<String>, BTreeMap<(String, String), PathBuf>> = BTreeMap::new();
    for import in &krate.imports {
        let common = import
            .from
            .iter()
            .zip(&import.to)
            .take_while(|(a, b)| a == b)
            .count();
        if common >= import.from.len() || common >= import.to.len() {
            continue; // a module naming itself, its parent or its own children
        }
        let target = import.to[..=common].to_vec();
        if !krate.modules.contains(&target) {
            continue; // an item of the parent, not a sibling module
        }
        edges
            .entry(import.from[..common].to_vec())
            .or_default()
            .entry((import.from[common].clone(), import.to[common].clone()))
            .or_insert_with(|| import.file.clone());
    }
    edges
}

/// A cycle among `edges`, as the modules in order, if there is one.
fn cycle(edges: &BTreeMap<(String, String), PathBuf>) -> Option<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from).or_default().push(to);
    }
    // Depth-first, with the path on the stack: a node met again on the path closes a cycle.
    fn visit<'a>(
        node: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = path[at..].iter().map(|n| n.to_string()).collect();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if !done.insert(node) {
            return None;
        }
        path.push(node);
        for to in next.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(to, next, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    next.keys()
        .find_map(|node| visit(node, &next, &mut Vec::new(), &mut done))
}

#[test]
fn sibling_modules_never_import_each_other_in_a_circle() {
    for (name, src) in [
        ("collector", workspace().join("collector/src")),
        ("middleware", workspace().join("middleware/src")),
    ] {
        let krate = read_crate(&src);
        let mut circles = Vec::new();
        for (parent, edges) in sibling_edges(&krate) {
            if let Some(cycle) = cycle(&edges) {
                let files: Vec<String> = cycle
                    .windows(2)
                    .map(|pair| {
                        let file = &edges[&(pair[0].clone(), pair[1].clone())];
                        format!("{} → {} ({})", pair[0], pair[1], file.display())
                    })
                    .collect();
                circles.push(format!(
                    "{name}: in {}: {}",
                    if parent.is_empty() {
                        "the crate root".to_owned()
                    } else {
                        parent.join("::")
                    },
                    files.join(", ")
                ));
            }
        }
        assert!(circles.is_empty(), "{}", circles.join("\n"));
    }
}

#[test]
fn the_cycle_finder_finds_a_cycle_and_passes_a_chain() {
    let edges = |pairs: &[(&str, &str)]| -> BTreeMap<(String, String), PathBuf> {
        pairs
            .iter()
            .map(|(a, b)| ((a.to_string(), b.to_string()), PathBuf::from("x.rs")))
            .collect()
    };
    /// Edges, the cycle expected, and why.
    type Row<'a> = (&'a [(&'a str, &'a str)], Option<&'a [&'a str]>, &'a str);
    let table: &[Row] = &[
        (&[("a", "b"), ("b", "c")], None, "a chain is no circle"),
        (
            &[("a", "b"), ("b", "a")],
            Some(&["a", "b", "a"]),
            "two modules naming each other",
        ),
        (
            &[("a", "b"), ("b", "c"), ("c", "a")],
            Some(&["a", "b", "c", "a"]),
            "a circle through three",
        ),
        (
            &[("a", "c"), ("b", "c")],
            None,
            "two modules naming a third is a diamond's half",
        ),
    ];
    for (pairs, expected, why) in table {
        let found = cycle(&edges(pairs));
        assert_eq!(
            found,
            expected.map(|c| c.iter().map(|s| s.to_string()).collect()),
            "{why}"
        );
    }
}

#[test]
fn the_middleware_never_imports_the_collector() {
    let manifest = std::fs::read_to_string(workspace().join("middleware/Cargo.toml"))
        .expect("the middleware's manifest");
    let manifest: toml::Table = manifest.parse().expect("a TOML manifest");
    for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
        let named = manifest
            .get(section)
            .and_then(|deps| deps.as_table())
            .is_some_and(|deps| deps.contains_key("wayfinder-collector"));
        assert!(
            !named,
            "middleware/Cargo.toml [{section}] names the collector"
        );
    }
    let krate = read_crate(&workspace().join("middleware/src"));
    assert!(
        krate.roots.contains("tower"),
        "the reader saw the middleware's names: {:?}",
        krate.roots
    );
    assert!(
        !krate.roots.contains("wayfinder_collector"),
        "the middleware names the collector's crate"
    );
}

/// The backticked spans of `markdown` outside fenced blocks.
fn code_spans(markdown: &str) -> Vec<String> {
    let mut spans = Vec::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut parts = line.split('`');
        parts.next();
        while let (Some(inside), Some(_)) = (parts.next(), parts.next()) {
            spans.push(inside.to_owned());
        }
    }
    spans
}

/// Whether a code span is a path of the workspace: a file (`.rs`, `.md`, `.toml`, `.proto`) or
/// a folder (ending in `/`), not a route (`/v1/traces`).
fn is_path(span: &str) -> bool {
    !span.starts_with('/')
        && !span.contains(char::is_whitespace)
        && !span.contains("://")
        && [".rs", ".md", ".toml", ".proto", "/"]
            .iter()
            .any(|end| span.ends_with(end))
}

#[test]
fn every_path_the_architecture_names_exists() {
    let root = workspace();
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).expect("the map");
    let bases = [
        root.clone(),
        root.join("collector/src"),
        root.join("middleware/src"),
        root.join("collector"),
        root.join("docs"),
    ];
    let paths: Vec<String> = code_spans(&doc)
        .into_iter()
        .filter(|s| is_path(s))
        .collect();
    assert!(
        paths.len() > 40,
        "the map names only {} paths: {paths:?}",
        paths.len()
    );
    let missing: Vec<&String> = paths
        .iter()
        .filter(|path| !bases.iter().any(|base| base.join(path).exists()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md names paths that do not exist (relative to the workspace, \
         collector/src, middleware/src, collector/ or docs/): {missing:?}"
    );
}

#[test]
fn the_path_reader_takes_files_and_folders_not_routes() {
    // (span, is it a path, why)
    let table = [
        ("ingest/grpc.rs", true, "a file"),
        ("store/log/", true, "a folder"),
        ("docs/fleet.md", true, "a document"),
        ("/v1/traces", false, "a route"),
        ("GET /api/v1/sql", false, "a request"),
        ("Collector::start", false, "an item"),
    ];
    for (span, expected, why) in table {
        assert_eq!(is_path(span), expected, "{span}: {why}");
    }
    assert_eq!(
        code_spans("a `x.rs` and `y/`\n```\n`z.rs`\n```\n"),
        vec!["x.rs".to_owned(), "y/".to_owned()],
        "spans outside fences only"
    );
}
