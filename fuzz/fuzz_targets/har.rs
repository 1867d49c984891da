//! `sniffer har LOG.jsonl`: any text read as JSONL records and turned into an HTTP Archive.
//! Nothing may panic, whatever the lines hold (records of another version, hand-edited files).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    if let Ok(records) = sniffer::record::read_jsonl(&text) {
        let har = sniffer::har::document(&records).expect("a HAR serialises");
        let _: serde_json::Value = serde_json::from_slice(&har).expect("the HAR is JSON");
    }
});
