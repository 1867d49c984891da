//! The URL a request is logged under, from its request-target (RFC 9112 §3.2).

/// The URL of a request with `target`, sent to `authority` (its Host, else the server's
/// address), over TLS or not: origin-form (`/path?q`) is joined to `http://authority`
/// (`https://` over TLS, RFC 9110 §4.2.2); absolute-form is the URL already; authority-form
/// (`host:port`, CONNECT) and asterisk-form (`*`, OPTIONS) name no resource on the server and
/// are shown as sent, never glued onto the Host.
pub fn url(target: &str, authority: &str, tls: bool) -> String {
    if target.starts_with('/') {
        // §3.2.1 origin-form.
        let scheme = if tls { "https://" } else { "http://" };
        let mut url = String::with_capacity(scheme.len() + authority.len() + target.len());
        url.push_str(scheme);
        url.push_str(authority);
        url.push_str(target);
        url
    } else {
        // §3.2.2 absolute-form, §3.2.3 authority-form, §3.2.4 asterisk-form, or something
        // else the server will refuse: as sent.
        target.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_target_form_gives_its_url() {
        assert_eq!(
            url("/v3/auth/tokens?nocatalog", "127.0.0.1:5000", false),
            "http://127.0.0.1:5000/v3/auth/tokens?nocatalog"
        );
        assert_eq!(
            url("/identity/v3", "127.0.0.1", true),
            "https://127.0.0.1/identity/v3"
        );
        assert_eq!(
            url("http://example.com/x", "127.0.0.1:3128", false),
            "http://example.com/x"
        );
        assert_eq!(
            url("foo.bar.com:443", "127.0.0.1:18100", false),
            "foo.bar.com:443"
        );
        assert_eq!(url("*", "127.0.0.1:8000", true), "*");
    }
}
