//! Where each sender names a delivery (its id, the same on every retry) and its event: headers
//! for most, the JSON body for Stripe and Slack. Read only after the signature was checked.

use serde_json::Value;

use super::scheme::Scheme;
use super::Headers;

/// A delivery as the sender names it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The same on every retry of one delivery: repeats answer the first job.
    pub id: Option<String>,
    /// What happened, e.g. GitHub's `push` or Stripe's `invoice.paid`.
    pub event: Option<String>,
}

/// Delivery ids longer than this are not ids: they are not kept.
const MAX_ID_LEN: usize = 255;

/// The delivery id and event of a verified request. `delivery_header` (the trigger's own
/// choice) replaces the scheme's id; `event_header` names the event for `hmac_sha256`.
pub fn identify(
    scheme: &Scheme,
    headers: &dyn Headers,
    body: &[u8],
    delivery_header: Option<&str>,
    event_header: Option<&str>,
) -> Delivery {
    let header = |name: &str| headers.get(name).map(str::to_owned);
    let json = || serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    let field = |v: &Value, name: &str| v.get(name).and_then(Value::as_str).map(str::to_owned);
    let mut delivery = match scheme {
        Scheme::Standard => Delivery {
            id: header("webhook-id"),
            event: field(&json(), "type"),
        },
        Scheme::Github => Delivery {
            id: header("x-github-delivery"),
            event: header("x-github-event"),
        },
        Scheme::Stripe => {
            let event = json();
            Delivery {
                id: field(&event, "id"),
                event: field(&event, "type"),
            }
        }
        Scheme::Slack => {
            let payload = json();
            // An Events API callback names its inner event; other payloads their own type.
            let inner = payload.get("event").and_then(|e| field(e, "type"));
            Delivery {
                id: field(&payload, "event_id"),
                event: inner.or_else(|| field(&payload, "type")),
            }
        }
        Scheme::Shopify => Delivery {
            id: header("x-shopify-webhook-id"),
            event: header("x-shopify-topic"),
        },
        Scheme::HmacSha256(_) => Delivery::default(),
    };
    if let Some(name) = delivery_header {
        delivery.id = header(name);
    }
    if let Some(name) = event_header {
        delivery.event = header(name);
    }
    delivery.id = delivery
        .id
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty() && id.len() <= MAX_ID_LEN);
    delivery
}

/// Slack's `url_verification` request: the challenge to answer, when it is one.
pub fn slack_challenge(body: &[u8]) -> Option<String> {
    let payload: Value = serde_json::from_slice(body).ok()?;
    if payload.get("type")?.as_str()? != "url_verification" {
        return None;
    }
    payload.get("challenge")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct One(&'static str, &'static str);

    impl Headers for One {
        fn get(&self, name: &str) -> Option<&str> {
            (name == self.0).then_some(self.1)
        }
    }

    #[test]
    fn ids_from_headers_and_bodies() {
        let stripe = br#"{"id":"evt_1","type":"invoice.paid"}"#;
        let got = identify(&Scheme::Stripe, &One("", ""), stripe, None, None);
        assert_eq!(got.id.as_deref(), Some("evt_1"));
        assert_eq!(got.event.as_deref(), Some("invoice.paid"));
        let slack = br#"{"type":"event_callback","event_id":"Ev1","event":{"type":"app_mention"}}"#;
        let got = identify(&Scheme::Slack, &One("", ""), slack, None, None);
        assert_eq!(got.id.as_deref(), Some("Ev1"));
        assert_eq!(got.event.as_deref(), Some("app_mention"));
        let got = identify(
            &Scheme::Github,
            &One("x-github-delivery", "d-1"),
            b"",
            None,
            None,
        );
        assert_eq!(got.id.as_deref(), Some("d-1"));
        let got = identify(
            &Scheme::Github,
            &One("x-request-id", "r"),
            b"",
            Some("x-request-id"),
            None,
        );
        assert_eq!(got.id.as_deref(), Some("r"));
        assert_eq!(
            slack_challenge(br#"{"type":"url_verification","challenge":"c1"}"#).as_deref(),
            Some("c1")
        );
        assert_eq!(slack_challenge(slack), None);
    }
}
