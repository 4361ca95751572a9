//! The web UI, served at `/` on the query port: a service map, each service's instances with
//! their weights, recent slow and failed traces, a trace waterfall and a SQL page.
//!
//! The UI is static: HTML, CSS and JavaScript from `collector/ui/`, compiled into the binary
//! (no CDN, works offline), and it reads only the documented query API (`docs/api.md`). The
//! graph is drawn by cytoscape.js, vendored unmodified in `collector/ui/vendor/` with its
//! licence. There is no JavaScript build step: what is in the repository is what is served.
//!
//! This module imports nothing else of the collector: it only answers files.

use std::sync::LazyLock;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, StatusCode, header};

/// One embedded file.
struct Asset {
    /// Where it is served.
    path: &'static str,
    /// Its `Content-Type`.
    content_type: &'static str,
    /// Its bytes.
    body: &'static [u8],
    /// A versioned name (the vendored library): cached for a year. The others are revalidated
    /// by `ETag` on every load, so that a new collector's UI shows at once.
    immutable: bool,
}

/// Every file of the UI.
static ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../../ui/index.html"),
        immutable: false,
    },
    Asset {
        path: "/ui/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../ui/app.js"),
        immutable: false,
    },
    Asset {
        path: "/ui/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../../ui/app.css"),
        immutable: false,
    },
    Asset {
        path: "/ui/vendor/cytoscape-3.35.0.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../ui/vendor/cytoscape-3.35.0.min.js"),
        immutable: true,
    },
    Asset {
        path: "/ui/vendor/LICENSE-cytoscape",
        content_type: "text/plain; charset=utf-8",
        body: include_bytes!("../../../ui/vendor/LICENSE-cytoscape"),
        immutable: true,
    },
];

/// Scripts only from the collector itself (the UI has no inline script); cytoscape sets
/// element styles, hence inline styles; span data is never markup (the UI sets text only).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The `ETag` of every asset, in the order of [`ASSETS`]: a hash of its bytes.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| {
            let tag = format!("\"{:016x}\"", fnv1a(asset.body));
            HeaderValue::from_str(&tag).expect("hex digits in quotes are a valid header value")
        })
        .collect()
});

/// FNV-1a, 64 bits: enough to tell two versions of a file apart.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The routes of the UI, to merge into the query port's router.
pub(crate) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS
        .iter()
        .enumerate()
        .fold(Router::new(), |router, (index, asset)| {
            router.route(
                asset.path,
                get(move |headers: HeaderMap| async move { answer(index, &headers) }),
            )
        })
}

/// The asset at `index` of [`ASSETS`], or 304 when the browser has it.
fn answer(index: usize, request: &HeaderMap) -> Response {
    let asset = &ASSETS[index];
    let etag = &ETAGS[index];
    let cache_control = if asset.immutable {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let common = [
        (header::ETAG, etag.clone()),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static(cache_control),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
    ];
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| tag.trim() == etag || tag.trim() == "*");
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        )],
        asset.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    async fn get(path: &str, if_none_match: Option<&HeaderValue>) -> Response {
        let mut request = Request::get(path);
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        router::<()>()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn every_asset_is_served_with_its_type_and_revalidates() {
        for asset in ASSETS {
            let response = get(asset.path, None).await;
            assert_eq!(response.status(), StatusCode::OK, "{}", asset.path);
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                asset.content_type,
                "{}",
                asset.path
            );
            let etag = response.headers()[header::ETAG].clone();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            assert_eq!(&body[..], asset.body, "{}", asset.path);
            assert!(!body.is_empty(), "{} is empty", asset.path);

            let again = get(asset.path, Some(&etag)).await;
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{}", asset.path);
            let stale = get(asset.path, Some(&HeaderValue::from_static("\"0\""))).await;
            assert_eq!(stale.status(), StatusCode::OK, "{}", asset.path);
        }
    }

    #[tokio::test]
    async fn the_page_loads_only_embedded_scripts() {
        let page = std::str::from_utf8(ASSETS[0].body).unwrap();
        let scripts: Vec<&str> = page
            .split("<script")
            .skip(1)
            .map(|tag| {
                let src = tag.split("src=\"").nth(1).expect("a script has a src");
                &src[..src.find('"').unwrap()]
            })
            .collect();
        assert_eq!(
            scripts,
            ["/ui/vendor/cytoscape-3.35.0.min.js", "/ui/app.js"],
            "the page's scripts"
        );
        for script in scripts {
            assert_eq!(get(script, None).await.status(), StatusCode::OK, "{script}");
        }
        assert_eq!(
            get("/ui/missing.js", None).await.status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn etags_differ_between_files() {
        let mut tags: Vec<_> = ETAGS.iter().collect();
        tags.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        tags.dedup();
        assert_eq!(tags.len(), ASSETS.len());
    }
}
