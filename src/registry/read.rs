//! Reading from a registry: the catalog and tag lists (paginated with `Link`), and small blobs (configs).
//!
//! Pagination follows the `Link: <URL>; rel="next"` header until there is none, as the distribution spec
//! and Gitea (n <= 100) do; a page limit of 10,000 guards against a registry that loops. A page is read up
//! to 4 MiB and parsed by a streaming visitor that hands each name to the caller as it is decoded, so
//! nothing but the current page is ever held: a registry sending huge pages, or many, costs time, not
//! memory. Blobs read whole (configs) have the same 4 MiB cap and are checked against their digest.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{MANIFEST_LIMIT, Registry, Request};
use crate::digest::Digest;
use crate::error::{Error, Result};

const MAX_PAGES: usize = 10_000;

impl Registry {
    /// Every repository name (`GET /v2/_catalog`, paginated), handed to `each` as it arrives.
    pub fn catalog(&mut self, each: &mut dyn FnMut(&str) -> Result<()>) -> Result<()> {
        self.paginate("/v2/_catalog?n=100".to_string(), None, "list repositories", "repositories", each)
    }

    /// Every tag of `repo` (`GET /v2/REPO/tags/list`, paginated), handed to `each` as it arrives.
    pub fn tags(&mut self, repo: &str, each: &mut dyn FnMut(&str) -> Result<()>) -> Result<()> {
        self.paginate(format!("/v2/{repo}/tags/list?n=100"), Some(repo), "list tags", "tags", each)
    }

    fn paginate(
        &mut self,
        first: String,
        repo: Option<&str>,
        what: &'static str,
        key: &'static str,
        each: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<()> {
        let mut url = Some(first);
        let mut pages = 0;
        while let Some(u) = url.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(Error::protocol(format!(
                    "{} kept paginating {what}; stopped after {MAX_PAGES} pages",
                    self.host()
                )));
            }
            let req = match repo {
                Some(r) => Request::new("GET", u, what).pull(r),
                None => Request::new("GET", u, what).access(super::Access::Catalog),
            }
            .limit(MANIFEST_LIMIT);
            let resp = self.send(&req)?;
            if resp.status != 200 {
                return Err(self.status_error(&req, &resp));
            }
            if resp.truncated {
                return Err(Error::protocol(format!(
                    "{} answered {what} with a page larger than {} MiB; refusing it",
                    self.host(),
                    MANIFEST_LIMIT / (1024 * 1024)
                )));
            }
            let mut failed = None;
            let mut de = serde_json::Deserializer::from_slice(&resp.body);
            ListPage { key, each: &mut *each, failed: &mut failed }.deserialize(&mut de).map_err(|e| {
                failed.take().unwrap_or_else(|| {
                    Error::protocol(format!("{} answered {what} with invalid JSON: {e}", self.host()))
                })
            })?;
            url = resp.header("link").and_then(next_link);
        }
        Ok(())
    }

    /// A blob's bytes (configs: small, at most 4 MiB), checked against its digest.
    pub fn get_blob(&mut self, repo: &str, digest: &Digest) -> Result<Vec<u8>> {
        let req = Request::new("GET", format!("/v2/{repo}/blobs/{digest}"), "reading a blob")
            .pull(repo)
            .limit(MANIFEST_LIMIT);
        let resp = self.send(&req)?;
        if resp.status != 200 {
            return Err(self.status_error(&req, &resp));
        }
        if resp.truncated || Digest::of(&resp.body) != *digest {
            return Err(Error::protocol(format!("{} sent a blob that does not match {digest}", self.host())));
        }
        Ok(resp.body)
    }
}

/// `{"KEY": ["a", "b", ...], ...}` decoded one name at a time into a callback; other keys are skipped.
struct ListPage<'a> {
    key: &'static str,
    each: &'a mut dyn FnMut(&str) -> Result<()>,
    /// The callback's own error, which stops the decoding.
    failed: &'a mut Option<Error>,
}

impl<'de> DeserializeSeed<'de> for ListPage<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ListPage<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an object with a {:?} list", self.key)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if k == self.key {
                map.next_value_seed(Names { each: &mut *self.each, failed: &mut *self.failed })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

struct Names<'a> {
    each: &'a mut dyn FnMut(&str) -> Result<()>,
    failed: &'a mut Option<Error>,
}

impl<'de> DeserializeSeed<'de> for Names<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for Names<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a list of names, or null")
    }
    fn visit_none<E: de::Error>(self) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while let Some(name) = seq.next_element::<std::borrow::Cow<'de, str>>()? {
            if let Err(e) = (self.each)(&name) {
                *self.failed = Some(e);
                return Err(de::Error::custom("stopped"));
            }
        }
        Ok(())
    }
}

/// The URL of `rel="next"` in a Link header.
pub fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().to_ascii_lowercase();
            p == "rel=\"next\"" || p == "rel=next"
        });
        let url = url.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then(|| url.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers() {
        assert_eq!(next_link(r#"</v2/_catalog?last=a&n=1>; rel="next""#).as_deref(), Some("/v2/_catalog?last=a&n=1"));
        assert_eq!(
            next_link(r#"<https://r/v2/x/tags/list?last=b>; rel=next, <https://r/prev>; rel="prev""#).as_deref(),
            Some("https://r/v2/x/tags/list?last=b")
        );
        assert_eq!(next_link(r#"</prev>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
    }

    fn names(json: &str) -> std::result::Result<Vec<String>, String> {
        let mut out = Vec::new();
        let mut failed = None;
        let mut each = |n: &str| {
            out.push(n.to_string());
            Ok(())
        };
        let mut de = serde_json::Deserializer::from_str(json);
        ListPage { key: "tags", each: &mut each, failed: &mut failed }
            .deserialize(&mut de)
            .map_err(|e| e.to_string())?;
        Ok(out)
    }

    #[test]
    fn pages_are_decoded_name_by_name() {
        assert_eq!(names(r#"{"name":"x","tags":["a","b\u0041"],"extra":{"k":[1,2]}}"#).unwrap(), ["a", "bA"]);
        assert_eq!(names(r#"{"name":"x","tags":null}"#).unwrap(), Vec::<String>::new());
        assert_eq!(names(r#"{"name":"x"}"#).unwrap(), Vec::<String>::new());
        assert!(names(r#"{"tags":[1]}"#).is_err());
        assert!(names("[]").is_err());
    }
}
