//! Span names and `http.route` values, made once per route instead of once per request.
//!
//! A route template (`/users/{id}`) comes from the application's router, so there are few of
//! them; building `"GET /users/{id}"` and copying the route for every request were two of the
//! allocations the server layer's profile showed, and with the batch processor freeing spans on
//! its own thread every allocation also contends for the allocator's lock. The table is bounded
//! ([`MAX_ROUTES`]) and shared by every layer of the process (a layer made per tenant or per
//! test must not leak a set of names each): past the bound, names are built per request.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry::StringValue;
use parking_lot::RwLock;

/// Routes kept; a router with more falls back to building names per request.
pub(crate) const MAX_ROUTES: usize = 1024;

/// One route's `http.route` value and span names by method.
#[derive(Debug)]
struct Route {
    value: StringValue,
    names: RwLock<HashMap<&'static str, &'static str>>,
}

/// The process's table.
pub(crate) static ROUTES: std::sync::LazyLock<Routes> = std::sync::LazyLock::new(Routes::default);

/// The table.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    routes: RwLock<HashMap<Box<str>, Arc<Route>>>,
}

/// The span name as the builder takes it.
pub(crate) type Name = std::borrow::Cow<'static, str>;

impl Routes {
    /// The span name `{method} {route}` and the `http.route` value.
    pub(crate) fn get(&self, method: &'static str, route: &str) -> (Name, StringValue) {
        let found = self.routes.read().get(route).cloned();
        let entry = match found {
            Some(entry) => entry,
            None => {
                let mut routes = self.routes.write();
                if routes.len() >= MAX_ROUTES && !routes.contains_key(route) {
                    return (
                        super::attributes::span_name(method, Some(route)).into(),
                        route.to_owned().into(),
                    );
                }
                routes
                    .entry(route.into())
                    .or_insert_with(|| {
                        Arc::new(Route {
                            value: StringValue::from(Arc::<str>::from(route)),
                            names: RwLock::new(HashMap::new()),
                        })
                    })
                    .clone()
            }
        };
        let name = entry.names.read().get(method).copied();
        let name = match name {
            Some(name) => name,
            None => *entry.names.write().entry(method).or_insert_with(|| {
                // Bounded by MAX_ROUTES × the ten methods a span name can carry.
                Box::leak(super::attributes::span_name(method, Some(route)).into_boxed_str())
            }),
        };
        (name.into(), entry.value.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_once_and_the_table_is_bounded() {
        let routes = Routes::default();
        let (first, route) = routes.get("GET", "/users/{id}");
        let (again, _) = routes.get("GET", "/users/{id}");
        assert_eq!(first, "GET /users/{id}");
        assert_eq!(route.as_str(), "/users/{id}");
        assert!(
            matches!((&first, &again), (Name::Borrowed(a), Name::Borrowed(b)) if std::ptr::eq(*a, *b)),
            "the second request reuses the first one's name"
        );
        assert_eq!(routes.get("POST", "/users/{id}").0, "POST /users/{id}");
        for i in 0..MAX_ROUTES {
            routes.get("GET", &format!("/r{i}"));
        }
        let (name, _) = routes.get("GET", "/one-too-many");
        assert!(
            matches!(name, Name::Owned(_)),
            "past the bound, built per request"
        );
        assert_eq!(name, "GET /one-too-many");
        assert_eq!(routes.routes.read().len(), MAX_ROUTES);
    }
}
