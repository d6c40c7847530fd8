//! Loading ONNX Runtime from a wrong path must be an error, never a crash. (Its own test binary:
//! the runtime is per process and the other tests load the right one.)
use genome_core::embed::Runtime;
use genome_core::Error;

#[test]
fn missing_and_wrong_libraries_are_errors() {
    let e = Runtime::get_or_load("/nonexistent/libonnxruntime.so")
        .err()
        .unwrap();
    assert!(
        matches!(e, Error::RuntimeLoad { .. }) && e.to_string().contains("no such file"),
        "{e}"
    );
    // A real shared library that is not ONNX Runtime.
    let libc = [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("zlib present");
    let e = Runtime::get_or_load(libc).err().unwrap();
    assert!(e.to_string().contains("OrtGetApiBase"), "{e}");
    // A file that is not a library at all.
    let e = Runtime::get_or_load("/etc/hostname").err().unwrap();
    assert!(matches!(e, Error::RuntimeLoad { .. }), "{e}");
    assert!(Runtime::loaded().is_none());
    // And the right one still loads afterwards.
    let good = std::env::var("GENOME_ORT_LIB")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/lib/pg_genome/libonnxruntime.so.1.31.1".into());
    let rt = Runtime::get_or_load(&good).unwrap();
    assert!(rt.version.starts_with("1."), "{}", rt.version);
}
