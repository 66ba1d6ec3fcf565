//! stub
use crate::AppState;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::Response;
/// stub
pub async fn handler(State(_app): State<AppState>) -> Response {
    axum::http::StatusCode::NOT_IMPLEMENTED.into_response()
}
/// stub
pub async fn count_tokens(State(_app): State<AppState>) -> Response {
    axum::http::StatusCode::NOT_IMPLEMENTED.into_response()
}
