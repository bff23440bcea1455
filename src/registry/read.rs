//! Reading from a registry: the catalog, tag lists (both paginated with `Link`), manifests and configs.
//!
//! Pagination follows the `Link: <URL>; rel="next"` header until there is none, as the distribution spec
//! and Gitea (n <= 100) do; a page limit of 10,000 guards against a registry that loops. Manifests are
//! asked for with every OCI and Docker media type in `Accept` (the reference registry answers 404 to an
//! OCI manifest request without the OCI type).

use serde_json::Value;

use super::{Registry, Request};
use crate::digest::Digest;
use crate::error::{Error, Result};

const MAX_PAGES: usize = 10_000;

impl Registry {
    /// Every repository name (`GET /v2/_catalog`, paginated).
    pub fn catalog(&mut self) -> Result<Vec<String>> {
        self.paginate("/v2/_catalog?n=100".to_string(), None, "list repositories", "repositories")
    }

    /// Every tag of `repo` (`GET /v2/REPO/tags/list`, paginated).
    pub fn tags(&mut self, repo: &str) -> Result<Vec<String>> {
        self.paginate(format!("/v2/{repo}/tags/list?n=100"), Some(repo), "list tags", "tags")
    }

    fn paginate(&mut self, first: String, repo: Option<&str>, what: &'static str, key: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut url = Some(first);
        let mut pages = 0;
        while let Some(u) = url.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(Error::Registry(format!(
                    "{} kept paginating {what}; stopped after {MAX_PAGES} pages",
                    self.host()
                )));
            }
            let mut req = Request::new("GET", u, what);
            if let Some(r) = repo {
                req = req.repository(r);
            } else {
                req.catalog = true;
            }
            let resp = self.send(&req)?;
            if resp.status != 200 {
                return Err(self.status_error(&req, &resp));
            }
            let v: Value = serde_json::from_slice(&resp.body)
                .map_err(|e| Error::Registry(format!("{} answered {what} with invalid JSON: {e}", self.host())))?;
            if let Some(items) = v.get(key).and_then(Value::as_array) {
                out.extend(items.iter().filter_map(Value::as_str).map(str::to_string));
            }
            url = resp.header("link").and_then(next_link);
        }
        Ok(out)
    }

    /// A blob's bytes (configs: small), checked against its digest.
    pub fn get_blob(&mut self, repo: &str, digest: &Digest) -> Result<Vec<u8>> {
        let req = Request::new("GET", format!("/v2/{repo}/blobs/{digest}"), "read blob").repository(repo);
        let resp = self.send(&req)?;
        if resp.status != 200 {
            return Err(self.status_error(&req, &resp));
        }
        if Digest::of(&resp.body) != *digest {
            return Err(Error::Registry(format!("{} sent a blob that does not match {digest}", self.host())));
        }
        Ok(resp.body)
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
    #[test]
    fn link_headers() {
        use super::next_link;
        assert_eq!(next_link(r#"</v2/_catalog?last=a&n=1>; rel="next""#).as_deref(), Some("/v2/_catalog?last=a&n=1"));
        assert_eq!(
            next_link(r#"<https://r/v2/x/tags/list?last=b>; rel=next, <https://r/prev>; rel="prev""#).as_deref(),
            Some("https://r/v2/x/tags/list?last=b")
        );
        assert_eq!(next_link(r#"</prev>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
    }
}
