//! Fuzzes the GGUF reader (spec/model.md §3.1, §3.4): any bytes must give `Ok` or an error,
//! never a panic, and a file that parses must hand out in-bounds tensor views of the right size.
#![no_main]

use ds4::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = GgufFile::from_bytes(data.to_vec()) {
        for info in f.tensors() {
            let t = f.tensor(&info.name).expect("listed tensors can be looked up");
            assert_eq!(t.data.len() as u64, info.n_bytes);
        }
        for (k, _) in f.metadata() {
            assert!(f.get(k).is_some());
        }
    }
});
