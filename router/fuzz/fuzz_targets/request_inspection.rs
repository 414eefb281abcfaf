//! The request inspection the router's security rests on, fed arbitrary input: path
//! normalization, the admin-route check, route classification and finding the model in a body.
//!
//! Beyond "never panics", it checks the property that keeps a node from reading a different
//! route than the router classified: the path sent upstream decodes back to exactly the
//! normalized path.
//!
//! Run with `cargo +nightly fuzz run request_inspection -- -max_total_time=60` in `router/`.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use ollama_mesh_router::proxy::{encode_path, is_admin_path, model_in, normalize_path, Route};

fuzz_target!(|data: &[u8]| {
    let _ = model_in(data);
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let Some(normalized) = normalize_path(path) else {
        return;
    };
    assert!(normalized.starts_with('/'), "{normalized:?}");
    assert!(!normalized.contains("//"), "{normalized:?}");
    let segments: Vec<&str> = normalized.split('/').skip(1).collect();
    assert!(
        normalized == "/"
            || segments
                .iter()
                .all(|s| !s.is_empty() && *s != "." && *s != ".."),
        "{normalized:?}"
    );
    let upstream = encode_path(&normalized);
    assert_eq!(
        normalize_path(&upstream).as_deref(),
        Some(normalized.as_str()),
        "the node would read {upstream:?} as another path than {normalized:?}"
    );
    let admin = is_admin_path(&normalized);
    for method in [Method::GET, Method::POST, Method::DELETE, Method::HEAD] {
        if let Route::Management(_) = Route::classify(&method, &normalized) {
            assert!(
                admin,
                "{method} {normalized:?} is management but not an admin path"
            );
        }
    }
});
