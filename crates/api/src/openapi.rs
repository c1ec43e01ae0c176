//! The API's OpenAPI 3.1 document, generated from the code: each handler's `#[utoipa::path]` (in
//! [`crate::routes`]) and the answer types of [`crate::views`] and [`crate::error`]. Served at
//! `/api/openapi.json`, read by Swagger UI at `/docs`.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{OpenApi, RefOr, Response, ResponseBuilder, content::ContentBuilder, header::HeaderBuilder};
use utoipa::{Modify, PartialSchema, ToSchema};

use crate::error::ErrorBody;

/// The buyer's bearer token (`orderly token --uid N`).
pub const BUYER: &str = "buyer";
/// The admin token (`orderly token --admin`).
pub const ADMIN: &str = "admin";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "orderly",
        description = "A high-concurrency order system: orders, stock reservation, payment. Every answer is the envelope `{status, message, data}`; an error adds a stable `code` (docs/API.md).",
    ),
    modifiers(&Security),
    tags(
        (name = "buyer", description = "Orders and commodities"),
        (name = "admin", description = "Catalog, stock, audit, work to do, settings (admin token)"),
        (name = "operator", description = "Health and metrics"),
    ),
)]
#[derive(Debug)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, document: &mut OpenApi) {
        let components = document.components.get_or_insert_with(Default::default);
        for (name, description) in [
            (BUYER, "A buyer's token: `orderly token --uid N` (HMAC-signed uid and expiry)"),
            (ADMIN, "The admin token: `orderly token --admin`"),
        ] {
            let mut scheme = Http::new(HttpAuthScheme::Bearer);
            scheme.description = Some(description.to_owned());
            components.add_security_scheme(name, SecurityScheme::Http(scheme));
        }
    }
}

/// Adds the answers every route of their kind can give, where a route does not describe them itself:
/// `401 unauthorized` on routes with a token, `503` (`unavailable`, `overloaded`) and `500 internal` on
/// routes that reach the system's engines. Also registers [`ErrorBody`]'s schema.
pub fn complete(document: &mut OpenApi) {
    let components = document.components.get_or_insert_with(Default::default);
    components.schemas.insert(ErrorBody::name().into_owned(), ErrorBody::schema());
    for (path, item) in document.paths.paths.iter_mut() {
        let reaches_engines = !matches!(path.as_str(), "/healthz" | "/metrics") && !path.starts_with("/dashboard");
        for operation in
            [&mut item.get, &mut item.put, &mut item.post, &mut item.delete].into_iter().filter_map(Option::as_mut)
        {
            let answers = &mut operation.responses.responses;
            if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                answers.entry("401".into()).or_insert_with(|| {
                    error("`unauthorized`: token missing, malformed, expired, or not an admin token", false)
                });
            }
            if reaches_engines {
                answers.entry("503".into()).or_insert_with(|| {
                    error("`unavailable`: a dependency is temporarily unavailable; `overloaded`: shed", true)
                });
                answers.entry("500".into()).or_insert_with(|| error("`internal`: a bug or corrupt data", false));
            }
        }
    }
}

fn error(description: &str, retry_after: bool) -> RefOr<Response> {
    let content = ContentBuilder::new().schema(Some(utoipa::openapi::Ref::from_schema_name(ErrorBody::name()))).build();
    let mut answer = ResponseBuilder::new().description(description).content("application/json", content);
    if retry_after {
        answer = answer.header(
            "Retry-After",
            HeaderBuilder::new().schema(Some(u64::schema())).description(Some("Seconds to wait")).build(),
        );
    }
    RefOr::T(answer.build())
}
