//! Tests of the wire format: framing, caps, change chunks, error classes.

use super::*;
use automerge::transaction::Transactable;

fn sync_msg(n: usize) -> ClientMsg {
    ClientMsg::Sync {
        version: PROTOCOL_VERSION,
        batch: Some(Batch {
            id: 7,
            docs: (0..n)
                .map(|i| PushDoc {
                    id: [i as u8; 16],
                    kind: Kind::CheckIn,
                    scope: "team:1".into(),
                    changes: vec![7; 300],
                })
                .collect(),
        }),
        pull: Some(Pull {
            cursors: vec![Cursor {
                scope: "team:1".into(),
                seq: 9,
            }],
            fresh: vec![],
        }),
    }
}

#[test]
fn frames_round_trip_plain_and_deflated() {
    let limits = Limits::default();
    for n in [0, 50] {
        let msg = sync_msg(n);
        let frame = encode_frame(&msg).unwrap();
        assert_eq!(decode_frame::<ClientMsg>(&frame, &limits).unwrap(), msg);
    }
}

#[test]
fn oversized_length_is_refused_before_allocating() {
    let limits = Limits {
        max_frame_bytes: 1000,
        ..Limits::default()
    };
    let err = frame_len(u32::MAX.to_be_bytes(), &limits).unwrap_err();
    assert!(matches!(err, ProtocolError::FrameTooLarge { .. }));
}

#[test]
fn truncated_and_random_frames_are_errors() {
    let limits = Limits::default();
    let frame = encode_frame(&sync_msg(3)).unwrap();
    assert!(decode_frame::<ClientMsg>(&frame[..frame.len() - 1], &limits).is_err());
    let mut junk = vec![0u8, 0, 0, 5, 0];
    junk.extend_from_slice(&[0xff; 4]);
    assert!(decode_frame::<ClientMsg>(&junk, &limits).is_err());
}

#[test]
fn deflate_bomb_is_capped() {
    let limits = Limits {
        max_inflated_bytes: 1 << 20,
        ..Limits::default()
    };
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut enc, &vec![0u8; 8 << 20]).unwrap();
    let bomb = enc.finish().unwrap();
    let mut frame = ((bomb.len() + 1) as u32).to_be_bytes().to_vec();
    frame.push(ENCODING_DEFLATE);
    frame.extend_from_slice(&bomb);
    let err = decode_frame::<ClientMsg>(&frame, &limits).unwrap_err();
    assert!(matches!(err, ProtocolError::InflatedTooLarge { .. }));
}

#[test]
fn change_chunks_split_and_garbage_is_refused() {
    let mut doc = automerge::AutoCommit::new();
    doc.put(automerge::ROOT, "a", 1).unwrap();
    doc.commit();
    doc.put(automerge::ROOT, "b", 2).unwrap();
    doc.commit();
    let mut bytes = Vec::new();
    for c in doc.get_changes(&[]) {
        bytes.extend_from_slice(c.raw_bytes());
    }
    let limits = Limits::default();
    assert_eq!(split_changes(&bytes, &limits).unwrap().len(), 2);
    assert!(split_changes(&bytes[..bytes.len() - 3], &limits).is_err());
    assert!(split_changes(b"not automerge at all", &limits).is_err());
    let saved = doc.save();
    assert!(split_changes(&saved, &limits).is_err());
    let tight = Limits {
        max_changes_per_round: 1,
        ..Limits::default()
    };
    assert!(matches!(
        split_changes(&bytes, &tight),
        Err(ProtocolError::Limit(_))
    ));
}

/// Every error code and close code has the class devices act on; an unknown close code is the
/// server or the path going away, never a refusal.
#[test]
fn every_error_and_close_code_has_its_class() {
    let codes = [
        (ErrorCode::Malformed, ErrorClass::Refused),
        (ErrorCode::TooLarge, ErrorClass::Refused),
        (ErrorCode::Version, ErrorClass::Refused),
        (ErrorCode::BadCode, ErrorClass::Refused),
        (ErrorCode::Unauthorized, ErrorClass::Unauthorized),
        (ErrorCode::RateLimited, ErrorClass::Retry),
        (ErrorCode::Internal, ErrorClass::Retry),
    ];
    for (code, class) in codes {
        assert_eq!(code.class(), class, "{code:?}");
    }
    let closes = [
        (u64::from(close::DONE), ErrorClass::Retry),
        (u64::from(close::UNAUTHORIZED), ErrorClass::Unauthorized),
        (2, ErrorClass::Retry),
        (u64::from(close::SHUTDOWN), ErrorClass::Retry),
        (u64::from(close::SERVER_ERROR), ErrorClass::Retry),
        (99, ErrorClass::Retry),
        (
            u64::from(u32::MAX) + 1 + u64::from(close::UNAUTHORIZED),
            ErrorClass::Retry,
        ),
    ];
    for (code, class) in closes {
        assert_eq!(close::class(code), class, "close code {code}");
    }
}
