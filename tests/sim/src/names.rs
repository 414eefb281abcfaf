//! Ollama model names.
//!
//! Ollama treats `llama3.2`, `llama3.2:latest`, `library/llama3.2:latest` and
//! `registry.ollama.ai/library/llama3.2:latest` as the same model, while responses echo the name
//! exactly as the client sent it. The simulator keys everything by the canonical short form
//! (`llama3.2:latest`, `user/model:tag`) that `/api/tags` and `/api/ps` display.

const DEFAULT_REGISTRY: &str = "registry.ollama.ai/";
const DEFAULT_NAMESPACE: &str = "library/";

/// The canonical name of `name`, or `None` when it is not a valid model name.
pub fn canonical(name: &str) -> Option<String> {
    let trimmed = name.trim();
    let short = trimmed.strip_prefix(DEFAULT_REGISTRY).unwrap_or(trimmed);
    let short = short.strip_prefix(DEFAULT_NAMESPACE).unwrap_or(short);
    if short.is_empty() || !short.chars().all(valid_char) {
        return None;
    }
    let last_segment = short.rsplit('/').next().unwrap_or(short);
    let mut out = short.to_ascii_lowercase();
    match last_segment.split_once(':') {
        None => out.push_str(":latest"),
        Some((base, tag)) if base.is_empty() || tag.is_empty() || tag.contains(':') => return None,
        Some(_) => {}
    }
    if out.split('/').any(str::is_empty) {
        return None;
    }
    Some(out)
}

/// The fully qualified form of a canonical name (`registry.ollama.ai/library/tiny:latest`), which
/// Ollama's scheduler errors name.
pub fn qualified(canonical: &str) -> String {
    match canonical.matches('/').count() {
        0 => format!("{DEFAULT_REGISTRY}{DEFAULT_NAMESPACE}{canonical}"),
        1 => format!("{DEFAULT_REGISTRY}{canonical}"),
        _ => canonical.to_owned(),
    }
}

/// The part after the colon of a canonical name.
pub fn tag(canonical: &str) -> &str {
    canonical.rsplit_once(':').map_or("latest", |(_, tag)| tag)
}

/// The part before the colon of a canonical name, without any namespace.
pub fn base(canonical: &str) -> &str {
    let without_tag = canonical
        .rsplit_once(':')
        .map_or(canonical, |(base, _)| base);
    without_tag.rsplit('/').next().unwrap_or(without_tag)
}

fn valid_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_is_implied_and_prefixes_are_optional() {
        for name in [
            "llama3.2",
            "llama3.2:latest",
            "library/llama3.2",
            "registry.ollama.ai/library/llama3.2:latest",
            "Llama3.2",
        ] {
            assert_eq!(
                canonical(name).as_deref(),
                Some("llama3.2:latest"),
                "{name}"
            );
        }
        assert_eq!(canonical("user/model:7b").as_deref(), Some("user/model:7b"));
    }

    #[test]
    fn invalid_names_are_rejected() {
        for name in ["", ":7b", "x:", "a b", "x:y:z", "a//b"] {
            assert_eq!(canonical(name), None, "{name}");
        }
    }

    #[test]
    fn qualified_names_fill_in_registry_and_namespace() {
        assert_eq!(
            qualified("tiny:latest"),
            "registry.ollama.ai/library/tiny:latest"
        );
        assert_eq!(qualified("user/m:7b"), "registry.ollama.ai/user/m:7b");
        assert_eq!(qualified("host.io/ns/m:7b"), "host.io/ns/m:7b");
    }

    #[test]
    fn tag_and_base() {
        assert_eq!(tag("qwen2.5:14b"), "14b");
        assert_eq!(base("user/qwen2.5:14b"), "qwen2.5");
    }
}
