//! Structured logs through `tracing` (RUST_LOG picks levels, default `info`), and traces: spans
//! exported by OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set — with no exporter, no
//! OpenTelemetry code runs at all — and the W3C `traceparent` a job carries either way.

use std::sync::OnceLock;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetryConfig};
use crate::domain::TraceParent;

/// Set when spans are exported.
static EXPORTER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// `process` names the service (`millrace-<process>`) unless `OTEL_SERVICE_NAME` does.
pub fn init(config: &TelemetryConfig, process: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let otel = config
        .otlp_endpoint
        .as_deref()
        .filter(|endpoint| !endpoint.trim().is_empty())
        .and_then(|endpoint| match exporter(config, endpoint, process) {
            Ok(provider) => {
                let tracer = provider.tracer("millrace");
                let _ = EXPORTER.set(provider);
                Some(tracing_opentelemetry::layer().with_tracer(tracer))
            }
            Err(e) => {
                eprintln!("OTEL_EXPORTER_OTLP_ENDPOINT: no trace exporter: {e}");
                None
            }
        });
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    // A second init (tests calling twice) is harmless: keep the first subscriber.
    let _ = match config.log_format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_target(false))
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_target(false),
            )
            .try_init(),
    };
}

fn exporter(
    config: &TelemetryConfig,
    endpoint: &str,
    process: &str,
) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig;
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
    // A traces-only endpoint, when given, is the exporter's to read; else `/v1/traces` under
    // the base endpoint, as the OTLP specification has it.
    if std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none() {
        builder = builder.with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')));
    }
    let exporter = builder.build()?;
    let name = config
        .service_name
        .clone()
        .unwrap_or_else(|| format!("millrace-{process}"));
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(name)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Sends the spans still buffered; call once, outside the async runtime, before exiting.
pub fn shutdown() {
    if let Some(provider) = EXPORTER.get() {
        if let Err(e) = provider.shutdown() {
            eprintln!("trace exporter: {e}");
        }
    }
}

/// Continues `parent` (a caller's trace) in `span`, when spans are exported.
pub fn continue_trace(span: &tracing::Span, parent: Option<&TraceParent>) {
    if let (Some(_), Some(parent)) = (EXPORTER.get(), parent) {
        let remote = SpanContext::new(
            TraceId::from_bytes(parent.trace_id),
            SpanId::from_bytes(parent.span_id),
            TraceFlags::new(parent.flags),
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
}

/// Whether spans are exported.
pub fn exporting() -> bool {
    EXPORTER.get().is_some()
}

/// The `traceparent` of the span `make_span` gives, a child of `parent` (a new trace without
/// one): the exported span's own ids when spans are exported, fresh ones otherwise (and no span
/// is made).
pub fn trace_of(
    make_span: impl FnOnce() -> tracing::Span,
    parent: Option<&TraceParent>,
) -> TraceParent {
    if exporting() {
        let span = make_span();
        continue_trace(&span, parent);
        let context = span.context();
        let ids = context.span().span_context().clone();
        if ids.is_valid() {
            return TraceParent {
                trace_id: ids.trace_id().to_bytes(),
                span_id: ids.span_id().to_bytes(),
                flags: ids.trace_flags().to_u8(),
            };
        }
    }
    parent.map_or_else(TraceParent::root, TraceParent::child)
}
