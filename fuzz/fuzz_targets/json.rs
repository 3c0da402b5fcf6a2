//! Fuzzes the JSON bodies of the interworking and key delivery reference points: ETSI GS QKD
//! 014 (key request, key IDs), Kxi-1 (`ext_keys`, its acknowledgement, `void`), Cxi
//! (prepare, status, result, abstract topology) and Mxi (fault reports, report packs, with
//! their version checks). The first byte picks the message. Reading any input must end in a
//! value or an error, never a panic, on a tokio worker's stack (2 MiB): serde_json's nesting
//! limit of 128 is what keeps the `Value` extensions from recursing without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Stack of a tokio worker thread (tokio's default).
const WORKER_STACK: usize = 2 * 1024 * 1024;

fn read<T: serde::de::DeserializeOwned>(body: &[u8]) {
    let _ = serde_json::from_slice::<T>(body);
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(WORKER_STACK)
            .spawn_scoped(scope, || match kind % 11 {
                0 => read::<qkdni::etsi014::KeyRequest>(body),
                1 => read::<qkdni::etsi014::KeyIds>(body),
                2 => read::<qkdni::km::kxi::messages::ExtKeyContainer>(body),
                3 => read::<Vec<qkdni::km::kxi::messages::AckContainer>>(body),
                4 => read::<qkdni::km::kxi::messages::VoidContainer>(body),
                5 => read::<qkdni::control::cxi::PrepareRequest>(body),
                6 => read::<qkdni::control::cxi::StatusReport>(body),
                7 => read::<qkdni::control::cxi::TransactionResult>(body),
                8 => read::<qkdni::control::cxi::AbstractTopology>(body),
                9 => {
                    let _ = qkdni::management::mxi::messages::parse::<
                        qkdni::management::mxi::messages::FaultReport,
                    >(body);
                }
                _ => {
                    let _ = qkdni::management::mxi::messages::parse::<
                        qkdni::management::mxi::messages::ReportPack,
                    >(body);
                }
            })
            .expect("fuzz worker thread")
            .join()
            .expect("a JSON reader panicked")
    });
});
