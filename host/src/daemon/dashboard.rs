//! The web dashboard `flowhost serve` serves at `/`: one page of plain
//! HTML, CSS and JavaScript compiled into the binary (nothing fetched from
//! elsewhere, so it works on a machine without internet). The page holds no
//! data: everything it shows it reads from the API with the bearer token the
//! user enters (kept in the browser's session storage), so the files are
//! served without the token and the data is not.
//!
//! Imports nothing of flowhost; the API mounts the routes.

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");

/// The page's own files allow nothing but themselves and the API.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Paths served without the token (they hold no data).
pub fn is_public(path: &str) -> bool {
    path == "/" || path.starts_with("/ui/")
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

async fn asset(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "app.js" => file("text/javascript; charset=utf-8", SCRIPT),
        "app.css" => file("text/css; charset=utf-8", STYLE),
        _ => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such file of the dashboard",
        )
            .into_response(),
    }
}

/// `/` and `/ui/{file}`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", axum::routing::get(index))
        .route("/ui/{name}", axum::routing::get(asset))
}
