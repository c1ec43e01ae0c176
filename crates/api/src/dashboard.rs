//! The live dashboard: `GET /dashboard`, a page that polls this process's `/metrics` (rates and the
//! entry's p99, computed in the page from two scrapes a second apart) and `GET /api/admin/dashboard`
//! (admin token: the work still to do, the hottest commodities' stock, the last audit's verdict). The
//! page and its chart library (uPlot, vendored from the npm registry) are built into the binary: no
//! build step, nothing fetched from elsewhere.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use orderly_app::admin::HotStock;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ok};
use crate::routes::ApiState;
use crate::views::{self, Envelope};

const PAGE: &str = include_str!("../assets/dashboard.html");
const UPLOT_JS: &str = include_str!("../assets/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../assets/uplot/uPlot.min.css");

/// Commodities shown, the most deducted first.
pub const HOT_COMMODITIES: usize = 10;

/// What the last `GET /api/admin/audit` of this process found.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditVerdict {
    /// When it ran (this process's clock).
    pub at_ms: u64,
    /// Whether the caller claimed quiet (then the cache must equal the store).
    pub quiet: bool,
    /// Violations of I1–I5 found; zero is clean.
    pub violations: usize,
    /// Orders by state at that moment.
    pub orders_by_state: BTreeMap<String, usize>,
}

/// A commodity's stock on the dashboard.
#[derive(Debug, Serialize, ToSchema)]
pub struct HotCommodity {
    pub commodity_id: orderly_domain::CommodityId,
    /// Everything ever added.
    pub initial: u64,
    /// Deducted in the store by live orders (to pay or paid).
    pub deducted: u64,
    /// What the cache can still sell now; null when it has not loaded the commodity.
    #[schema(required = true)]
    pub selling: Option<u64>,
}

impl From<HotStock> for HotCommodity {
    fn from(stock: HotStock) -> Self {
        HotCommodity {
            commodity_id: stock.commodity_id,
            initial: stock.initial,
            deducted: stock.deducted,
            selling: stock.selling,
        }
    }
}

/// `GET /api/admin/dashboard`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Dashboard {
    /// This process's clock.
    pub now_ms: u64,
    pub work: views::Work,
    /// The most deducted commodities, most first.
    pub hot: Vec<HotCommodity>,
    /// The last audit run through this process, or null.
    #[schema(required = true)]
    pub audit: Option<AuditVerdict>,
}

#[utoipa::path(get, path = "/dashboard", tag = "operator",
    description = "The live dashboard (HTML). Its data needs the admin token: open `/dashboard#token=<admin token>` or paste it into the page.",
    responses((status = 200, description = "The page", content_type = "text/html; charset=utf-8", body = String)))]
pub(crate) async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

#[utoipa::path(get, path = "/dashboard/uplot.js", tag = "operator",
    responses((status = 200, description = "uPlot 1.6.32 (MIT), the page's chart library", content_type = "text/javascript; charset=utf-8", body = String)))]
pub(crate) async fn uplot_js() -> Response {
    asset("text/javascript; charset=utf-8", UPLOT_JS)
}

#[utoipa::path(get, path = "/dashboard/uplot.css", tag = "operator",
    responses((status = 200, description = "uPlot's style sheet", content_type = "text/css; charset=utf-8", body = String)))]
pub(crate) async fn uplot_css() -> Response {
    asset("text/css; charset=utf-8", UPLOT_CSS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

#[utoipa::path(get, path = "/api/admin/dashboard", tag = "admin", security(("admin" = [])),
    description = "What the dashboard shows besides this process's `/metrics`: the work still to do, the most deducted commodities' stock, the last audit's verdict.",
    responses((status = 200, description = "The dashboard's data", body = Envelope<Dashboard>)))]
pub(crate) async fn data(State(state): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    state.admin(&headers)?;
    let orderly = state.orderly();
    let work = orderly.work_to_do().await?;
    let hot = orderly.hot_stock(HOT_COMMODITIES).await?;
    Ok(ok(
        StatusCode::OK,
        Dashboard {
            now_ms: orderly.now_ms(),
            work: work.into(),
            hot: hot.into_iter().map(HotCommodity::from).collect(),
            audit: state.last_audit(),
        },
    ))
}
