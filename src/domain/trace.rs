//! W3C Trace Context (`traceparent`): a job continues its caller's trace through the queue,
//! and its script gets it as `TRACEPARENT`.

use std::fmt;

/// `00-<trace id>-<parent id>-<flags>`, ids in lowercase hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

/// Sampled: without an exporter of our own, the decision is the next system's.
const SAMPLED: u8 = 1;

impl TraceParent {
    /// A header as the W3C recommendation reads it: version `00` exactly, a later version by
    /// its first four fields; all-zero ids, version `ff` and upper case are invalid.
    pub fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let bytes = header.as_bytes();
        if bytes.len() < 55 || (bytes.len() > 55 && (header.starts_with("00") || bytes[55] != b'-'))
        {
            return None;
        }
        let mut fields = header.get(..55)?.split('-');
        let version = hex::<1>(fields.next()?)?;
        let trace_id = hex::<16>(fields.next()?)?;
        let span_id = hex::<8>(fields.next()?)?;
        let flags = hex::<1>(fields.next()?)?;
        let valid = version[0] != 0xff && trace_id != [0; 16] && span_id != [0; 8];
        valid.then_some(Self {
            trace_id,
            span_id,
            flags: flags[0],
        })
    }

    /// The start of a new trace.
    pub fn root() -> Self {
        Self {
            trace_id: nonzero(),
            span_id: nonzero(),
            flags: SAMPLED,
        }
    }

    /// A span of the same trace under this one.
    pub fn child(&self) -> Self {
        Self {
            span_id: nonzero(),
            ..*self
        }
    }

    pub fn trace_id_hex(&self) -> String {
        ::hex::encode(self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            ::hex::encode(self.trace_id),
            ::hex::encode(self.span_id),
            self.flags
        )
    }
}

fn hex<const N: usize>(field: &str) -> Option<[u8; N]> {
    if field.len() != 2 * N || field.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; N];
    ::hex::decode_to_slice(field, &mut out).ok()?;
    Some(out)
}

fn nonzero<const N: usize>() -> [u8; N] {
    loop {
        let id: [u8; N] = rand::random();
        if id != [0; N] {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIVEN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_header_round_trips_and_a_child_keeps_the_trace() {
        let parent = TraceParent::parse(GIVEN).unwrap();
        assert_eq!(parent.to_string(), GIVEN);
        let child = parent.child();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.span_id, parent.span_id);
        assert_eq!(child.flags, 1);
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes";
        assert_eq!(TraceParent::parse(later).unwrap().trace_id, parent.trace_id);
    }

    #[test]
    fn a_header_with_non_ascii_text_is_ignored_without_panicking() {
        // 54 ASCII bytes then a two-byte character: byte 55 is inside it.
        let header = format!("{}é-and-more", &GIVEN[..54]);
        assert_eq!(TraceParent::parse(&header), None);
        assert_eq!(
            TraceParent::parse("00-ééééééééééééééééé-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(TraceParent::parse(&"é".repeat(40)), None);
    }

    #[test]
    fn invalid_headers_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        let root = TraceParent::root();
        assert_eq!(TraceParent::parse(&root.to_string()), Some(root));
    }
}
