//! The web dashboard: one HTML page, its script, style sheet and icon,
//! compiled into the binary and served at `/` (no build step, nothing
//! fetched from elsewhere, so it works offline).
//!
//! The assets hold no data. The page's script reads the REST API
//! (`/v1/pools`, `/v1/volumes`, `/v1/claims`, `/v1/events/stream`,
//! `/metrics`) as any client does, under the API's token rule: from
//! loopback reads need no token; from elsewhere the page sends the token an
//! operator types in (kept in `sessionStorage`). So the assets themselves are
//! served without the auth layer, and this module must not grow endpoints of
//! its own: whatever the page shows comes from the API. The page offers no
//! action that changes state.
//!
//! Every reply carries a strict Content-Security-Policy (`default-src
//! 'self'`, no inline script or style) and is not to be framed.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::rest::ApiError;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");
const ICON_SVG: &str = include_str!("dashboard/icon.svg");

/// Where the page's script and style sheet are served.
pub const APP_JS_PATH: &str = "/dashboard/app.js";
pub const STYLE_CSS_PATH: &str = "/dashboard/style.css";
pub const ICON_SVG_PATH: &str = "/dashboard/icon.svg";

/// The policy every dashboard reply carries: the page's own script and
/// style sheet, requests to its own origin, nothing else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes, to merge into the REST router (outside its auth
/// layer: see the module doc).
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            APP_JS_PATH,
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            STYLE_CSS_PATH,
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route(
            ICON_SVG_PATH,
            get(|| async { asset("image/svg+xml", ICON_SVG) }),
        )
        .method_not_allowed_fallback(|| async {
            ApiError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                code: "method_not_allowed",
                message: "the dashboard is read-only: GET it".to_string(),
            }
        })
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, HeaderValue); 6] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        // The assets change with the binary: revalidate rather than run a
        // stale script against a newer API.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_its_assets_from_where_they_are_served_and_nothing_inline() {
        assert!(INDEX_HTML.contains(&format!(r#"src="{APP_JS_PATH}""#)));
        assert!(INDEX_HTML.contains(&format!(r#"href="{STYLE_CSS_PATH}""#)));
        assert!(INDEX_HTML.contains(&format!(r#"href="{ICON_SVG_PATH}""#)));
        // The policy forbids inline script and style; the page has none.
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
        assert!(!INDEX_HTML.contains("<style"));
        assert!(!INDEX_HTML.contains(" style="));
        let handler = INDEX_HTML.split(" on").skip(1).find(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert_eq!(handler, None, "an inline event handler");
        // Nothing from elsewhere (the SVG namespace is a name, not a fetch).
        for asset in [INDEX_HTML, APP_JS, STYLE_CSS, ICON_SVG] {
            let asset = asset.replace("http://www.w3.org/2000/svg", "");
            assert!(!asset.contains("http://"), "an absolute URL in an asset");
            assert!(!asset.contains("https://"), "an absolute URL in an asset");
        }
    }

    #[test]
    fn the_script_never_parses_data_as_html() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!APP_JS.contains(sink), "app.js uses {sink}");
        }
    }
}
