//! The web UI in a real browser: a collector fed by the demo fleet (one slow `checkout`
//! instance), headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`, which `.ci/run` installs). The map must show the fleet's services,
//! virtual nodes and edges; clicking `checkout` on the canvas must show its three instances
//! with their weights (the slow one lowest); a slow trace opens as a waterfall; the SQL page
//! answers; a refresh keeps the layout. Screenshots go to `target/ui/`.
//!
//! Without Chromium the test says so and passes, unless `WAYFINDER_REQUIRE_BROWSER=1` (as in
//! `.ci/run`), where a missing browser fails it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use fantoccini::actions::{InputSource, MOUSE_BUTTON_LEFT, MouseActions, PointerAction};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use wayfinder_e2e::{http_client, loopback_config, start};

/// How long any one thing the page should do may take (the weights need a few refreshes).
const PATIENCE: Duration = Duration::from_secs(40);

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// A child process killed when dropped (also when the test fails).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// chromedriver on a free loopback port, stopped when dropped.
async fn chromedriver(program: &Path) -> (KillOnDrop, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let child = std::process::Command::new(program)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(KillOnDrop)
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let client = http_client();
    for _ in 0..100 {
        if let Ok(answer) = client.get(format!("{url}/status")).send().await
            && answer.status().is_success()
        {
            return (child, url);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver never answered on {url}");
}

/// Polls a script until it returns something truthy (a non-empty array, `true`, a non-empty
/// string, a non-zero number); returns that.
async fn wait_for_script(browser: &Client, what: &str, script: &str) -> Value {
    wait_for_script_for(browser, what, script, PATIENCE).await
}

/// [`wait_for_script`] with its own patience.
async fn wait_for_script_for(
    browser: &Client,
    what: &str,
    script: &str,
    patience: Duration,
) -> Value {
    let deadline = tokio::time::Instant::now() + patience;
    let mut last = Value::Null;
    while tokio::time::Instant::now() < deadline {
        last = browser
            .execute(script, vec![])
            .await
            .expect("the script runs");
        let truthy = match &last {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Array(items) => !items.is_empty(),
            Value::String(text) => !text.is_empty(),
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::Object(_) => true,
        };
        if truthy {
            let waited = patience.saturating_sub(deadline - tokio::time::Instant::now());
            if waited > Duration::from_secs(5) {
                eprintln!("{what}: took {waited:?}");
            }
            return last;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A script may leave what it saw in `window.__seen` when it was not satisfied.
    let seen = browser
        .execute("return window.__seen ?? null", vec![])
        .await
        .unwrap_or(Value::Null);
    panic!("{what}: never happened; last answer {last}; last seen {seen}");
}

/// Waits (up to two minutes) until the weights API gives `checkout-3`, the slow one, the
/// lowest weight of checkout's instances.
async fn slow_instance_weighs_least(base: &str) {
    let client = http_client();
    let started = tokio::time::Instant::now();
    let mut last = Value::Null;
    while started.elapsed() < Duration::from_secs(120) {
        if let Ok(answer) = client
            .get(format!("{base}/api/v1/weights/checkout"))
            .send()
            .await
            && let Ok(body) = answer.json::<Value>().await
        {
            let weights: Vec<(String, f64)> = body["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| {
                    Some((e["instance_id"].as_str()?.to_owned(), e["weight"].as_f64()?))
                })
                .collect();
            let slow = weights
                .iter()
                .find(|(id, _)| id == "checkout-3")
                .map(|w| w.1);
            if weights.len() == 3
                && let Some(slow) = slow
                && weights
                    .iter()
                    .all(|(id, w)| id == "checkout-3" || *w > slow)
            {
                if started.elapsed() > Duration::from_secs(5) {
                    eprintln!(
                        "the weights API put checkout-3 lowest after {:?}",
                        started.elapsed()
                    );
                }
                return;
            }
            last = body;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the weights API never put checkout-3 lowest; last answer {last}");
}

/// Clicks the element `css` finds.
async fn click(browser: &Client, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} is on the page: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("a click on {css}: {e}"));
}

/// Types `statement` into the SQL page's box and runs it.
async fn run_sql(browser: &Client, statement: &str) {
    let text = browser
        .find(Locator::Css("#sql-text"))
        .await
        .expect("the query box");
    text.clear().await.expect("cleared");
    text.send_keys(statement).await.expect("typed");
    click(browser, "#sql-run").await;
}

async fn save_screenshot(browser: &Client, name: &str) -> PathBuf {
    let png = browser.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let dir = target_dir().join("ui");
    std::fs::create_dir_all(&dir).expect("target/ui");
    let path = dir.join(name);
    std::fs::write(&path, png).expect("the screenshot is written");
    path
}

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_shows_the_map_the_weights_a_trace_and_sql() {
    let required = std::env::var("WAYFINDER_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let (Some(chromium), Some(driver)) = (
        find_program(&["chromium", "chromium-browser", "google-chrome"]),
        find_program(&["chromedriver"]),
    ) else {
        assert!(
            !required,
            "WAYFINDER_REQUIRE_BROWSER=1 but chromium or chromedriver is not on PATH"
        );
        eprintln!(
            "skipped: no chromium and chromedriver on PATH (apt-get install chromium chromium-driver)"
        );
        return;
    };

    let collector = start(loopback_config()).await;
    let addrs = collector.addrs();
    let fleet =
        wayfinder_demo::fleet::Fleet::start(&wayfinder_demo::fleet::CollectorUrls::of(&addrs))
            .expect("the fleet starts");
    fleet
        .knobs("checkout-3")
        .expect("checkout-3")
        .apply(wayfinder_demo::Effect::Slow);
    let counts = Arc::new(wayfinder_demo::drive::Counts::default());
    let traffic = wayfinder_demo::drive::start(fleet.frontend(), 40, counts);

    let (_chromedriver, driver_url) = chromedriver(&driver).await;
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-extensions", "--no-first-run",
                     "--hide-scrollbars", "--window-size=1500,950"],
        }),
    );
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver_url)
        .await
        .expect("a WebDriver session");

    let base = format!("http://{}", addrs.query_http);
    browser
        .goto(&format!("{base}/"))
        .await
        .expect("the UI loads");

    // The map: every service, the virtual nodes by kind, every edge of the fleet.
    let expected_edges = [
        ("user", "frontend"),
        ("frontend", "checkout"),
        ("checkout", "payments"),
        ("checkout", "inventory"),
        ("checkout", "shop"),
        ("checkout", "notifications"),
    ];
    let edges_script =
        "return window.wayfinder.cy.edges().map(e => e.source().id() + '>' + e.target().id())";
    let script = format!(
        "const drawn = new Set(({})());
         return {:?}.every(e => drawn.has(e));",
        edges_script.replacen("return ", "() => ", 1),
        expected_edges
            .iter()
            .map(|(a, b)| format!("{a}>{b}"))
            .collect::<Vec<_>>()
    );
    wait_for_script(&browser, "every edge of the fleet drawn", &script).await;
    let kinds = browser
        .execute(
            "return window.wayfinder.cy.nodes().map(n => n.id() + ':' + n.data('kind'))",
            vec![],
        )
        .await
        .expect("the nodes");
    let kinds = strings(&kinds);
    for node in [
        "user:user",
        "frontend:service",
        "checkout:service",
        "payments:service",
        "inventory:service",
        "notifications:service",
        "shop:database",
    ] {
        assert!(kinds.contains(node), "{node} is on the map: {kinds:?}");
    }
    // Drawn distinctly: a virtual node's shape is not a service's.
    let shapes = browser
        .execute(
            "const cy = window.wayfinder.cy;
             return ['checkout', 'shop', 'user'].map(id => cy.getElementById(id).style('shape'))",
            vec![],
        )
        .await
        .expect("the shapes");
    assert_eq!(
        strings(&shapes).len(),
        3,
        "three kinds, three shapes: {shapes}"
    );
    // The edge table lists the same edges with their figures.
    let table = browser
        .execute(
            "return [...document.querySelectorAll('#edges tbody tr')].map(tr => [...tr.children].map(td => td.textContent))",
            vec![],
        )
        .await
        .expect("the edge table");
    let table: Vec<Vec<String>> = serde_json::from_value(table).expect("rows of cells");
    for (from, to) in expected_edges {
        let row = table
            .iter()
            .find(|row| row[0] == from && row[1] == to)
            .unwrap_or_else(|| panic!("{from} → {to} in the edge table: {table:?}"));
        assert!(row[3].ends_with("/s"), "a rate: {row:?}");
        assert!(row[4].ends_with('%'), "an error rate: {row:?}");
        assert!(
            row[5].ends_with(" ms") || row[5].ends_with(" s"),
            "a p99: {row:?}"
        );
    }

    // A refresh keeps where the nodes are.
    let positions = "return window.wayfinder.cy.nodes().map(n => n.id() + '@' + Math.round(n.position('x')) + ',' + Math.round(n.position('y'))).sort()";
    let before = browser.execute(positions, vec![]).await.expect("positions");
    let status_before = browser
        .execute(
            "return document.querySelector('#status').textContent",
            vec![],
        )
        .await
        .expect("the status");
    wait_for_script(
        &browser,
        "the map refreshed",
        &format!(
            "const s = document.querySelector('#status').textContent; return s.startsWith('Updated') && s !== {status_before};"
        ),
    )
    .await;
    let after = browser.execute(positions, vec![]).await.expect("positions");
    assert_eq!(before, after, "the layout survives a refresh");

    // Clicking checkout on the canvas opens its instances with their weights. The click is
    // aimed at where the node is drawn now; should a late layout move it between aiming and
    // clicking, aim again (at most five times).
    let mut opened = false;
    for _ in 0..5 {
        let point = browser
            .execute(
                "const cy = window.wayfinder.cy; const node = cy.getElementById('checkout');
                 const box = cy.container().getBoundingClientRect(); const p = node.renderedPosition();
                 return [box.left + p.x, box.top + p.y];",
                vec![],
            )
            .await
            .expect("checkout's position");
        let (x, y) = (point[0].as_f64().expect("x"), point[1].as_f64().expect("y"));
        browser
            .perform_actions(
                MouseActions::new("mouse".into())
                    .then(PointerAction::MoveTo {
                        duration: None,
                        x: x.round(),
                        y: y.round(),
                    })
                    .then(PointerAction::Down {
                        button: MOUSE_BUTTON_LEFT,
                    })
                    .then(PointerAction::Up {
                        button: MOUSE_BUTTON_LEFT,
                    }),
            )
            .await
            .expect("a click on checkout");
        for _ in 0..10 {
            let hash = browser
                .execute("return location.hash", vec![])
                .await
                .expect("the address");
            if hash == "#/service/checkout" {
                opened = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if opened {
            break;
        }
    }
    assert!(opened, "a click on checkout's node opens its panel");
    // How fast the weights converge is the weights engine's business (tests/balancing.rs);
    // here the UI must show what the API says once it says it.
    // The weights move every second and the panel refreshes every 5 s: once seen in the API,
    // the slow instance's lowest weight may take more than one refresh to be caught in the UI.
    // (The ranking used to come and go, or never come: once the clients' own peak-EWMA stopped
    // sending checkout-3 requests, it fell below the minimum volume and got the mean weight.
    // Now its few requests count in proportion and it holds what it earned; see
    // docs/weights.md, "Quiet instances".)
    slow_instance_weighs_least(&base).await;
    let weights = wait_for_script_for(
        &browser,
        "checkout's three instances with weights, the slow one lowest",
        "if (location.hash !== '#/service/checkout' || document.querySelector('#panel').hidden) return null;
         const rows = [...document.querySelectorAll('#instances tbody tr')].map(tr =>
           [...tr.children].map(td => td.textContent));
         window.__seen = rows;
         if (rows.length !== 3 || rows.some(r => isNaN(parseFloat(r[2])))) return null;
         const w = Object.fromEntries(rows.map(r => [r[0], parseFloat(r[2])]));
         return w['checkout-3'] < w['checkout-1'] && w['checkout-3'] < w['checkout-2'] ? rows : null;",
        Duration::from_secs(120),
    )
    .await;
    let rows = weights.as_array().expect("rows");
    for row in rows {
        let cells: Vec<&str> = row
            .as_array()
            .expect("cells")
            .iter()
            .map(|c| c.as_str().expect("text"))
            .collect();
        assert_eq!(cells[1], "passing", "health of {}", cells[0]);
        assert_ne!(cells[3], "—", "a reason for {}'s weight", cells[0]);
        assert!(cells[7].ends_with('%'), "a traffic share for {}", cells[0]);
    }
    let title = browser
        .find(Locator::Css("#panel-title"))
        .await
        .expect("the panel")
        .text()
        .await
        .expect("its title");
    assert_eq!(title, "checkout");
    let slow = wait_for_script(
        &browser,
        "checkout's slowest requests listed",
        "return [...document.querySelectorAll('#slow-traces a[data-trace]')].map(a => a.dataset.trace)",
    )
    .await;
    let map_png = save_screenshot(&browser, "service-map.png").await;

    // A trace opens as a waterfall; a span opens its attributes.
    let trace_id = slow[0].as_str().expect("a trace id").to_owned();
    click(
        &browser,
        &format!("#slow-traces a[data-trace='{trace_id}']"),
    )
    .await;
    let services = wait_for_script(
        &browser,
        "the trace's waterfall",
        "return [...document.querySelectorAll('#waterfall .span-row .svc')].map(s => s.textContent)",
    )
    .await;
    let services = strings(&services);
    for service in ["frontend", "checkout", "payments", "inventory"] {
        assert!(
            services.contains(service),
            "{service} in the waterfall: {services:?}"
        );
    }
    click(&browser, "#waterfall .span-row").await;
    let detail = wait_for_script(
        &browser,
        "the root span's attributes",
        "const d = document.querySelector('#waterfall .span-detail'); return d ? d.textContent : ''",
    )
    .await;
    let detail = detail.as_str().expect("text");
    assert!(detail.contains("http.request.method"), "{detail}");
    assert!(detail.contains("service.name"), "{detail}");
    save_screenshot(&browser, "trace.png").await;

    // The SQL page.
    browser
        .goto(&format!("{base}/#/sql"))
        .await
        .expect("the SQL page");
    run_sql(
        &browser,
        "SELECT service_name, count(*) AS spans FROM spans GROUP BY service_name ORDER BY service_name",
    )
    .await;
    let result = wait_for_script(
        &browser,
        "the SQL answer as a table",
        "const head = [...document.querySelectorAll('#sql-result thead th')].map(t => t.textContent);
         const rows = [...document.querySelectorAll('#sql-result tbody tr')].map(tr => [...tr.children].map(td => td.textContent));
         return head.length ? [head, rows] : null;",
    )
    .await;
    assert_eq!(result[0], json!(["service_name", "spans"]));
    let names: BTreeSet<String> = result[1]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| row[0].as_str().expect("a name").to_owned())
        .collect();
    assert!(
        ["checkout", "frontend", "payments"]
            .iter()
            .all(|s| names.contains(*s)),
        "{names:?}"
    );
    // A refused statement shows the API's error.
    run_sql(&browser, "DROP TABLE spans").await;
    let error = wait_for_script(
        &browser,
        "the refusal",
        "const s = document.querySelector('#sql-status'); return s.classList.contains('error-text') ? s.textContent : ''",
    )
    .await;
    assert!(
        error.as_str().is_some_and(|e| e.contains("read")),
        "the API's reason: {error}"
    );
    save_screenshot(&browser, "sql.png").await;

    browser.close().await.expect("the session ends");
    traffic.abort();
    fleet.shutdown().await.expect("the fleet leaves");
    collector.shutdown().await;
    eprintln!("screenshot: {}", map_png.display());
}
