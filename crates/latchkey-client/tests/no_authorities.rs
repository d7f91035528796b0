//! A machine with no certificate authority at all (a container without ca-certificates):
//! `Client::new` still makes an `http://` client, and says why it cannot make an `https://` one.
//! A binary of its own: it changes the process's environment, which no other test may see.

use latchkey_client::{Client, Error};

#[tokio::test]
async fn with_no_certificate_authority_at_all_http_works_and_https_says_why_not() {
    // Arrange: the authorities rustls-native-certs reads, pointed at nothing.
    let saved: Vec<_> = ["SSL_CERT_FILE", "SSL_CERT_DIR"]
        .into_iter()
        .map(|k| (k, std::env::var_os(k)))
        .collect();
    // SAFETY: this binary's only test; nothing else runs in the process yet.
    unsafe {
        std::env::set_var("SSL_CERT_FILE", "/nonexistent/ca.pem");
        std::env::set_var("SSL_CERT_DIR", "/nonexistent");
    }

    // Act
    let http = Client::new("http://127.0.0.1:1");
    let https = Client::new("https://127.0.0.1:1");
    let https_given_one = Client::new_with_ca_certificates("https://127.0.0.1:1", CA.as_bytes());
    let given_junk = Client::new_with_ca_certificates("https://127.0.0.1:1", b"not a PEM\n");
    for (k, v) in saved {
        // SAFETY: as above.
        unsafe {
            match v {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
    }

    // Assert
    assert!(http.is_ok(), "{:?}", http.err());
    let e = https.unwrap_err();
    assert!(
        matches!(&e, Error::Config(m) if m.starts_with("loading the certificate authorities")),
        "{e:?}"
    );
    assert!(https_given_one.is_ok(), "{:?}", https_given_one.err());
    let e = given_junk.unwrap_err();
    assert!(
        matches!(&e, Error::Config(m) if m.contains("no PEM certificate")),
        "{e:?}"
    );
}

/// A certificate authority (P-256, valid until 2126) that signed nothing: parsed, never used.
const CA: &str = "-----BEGIN CERTIFICATE-----
MIIBnTCCAUOgAwIBAgIUU1M2uCSdS+Cs/dLmHmOdrYleMHEwCgYIKoZIzj0EAwIw
IzEhMB8GA1UEAwwYTGF0Y2hrZXkgdGVzdCBmaXh0dXJlIENBMCAXDTI2MTIwMjEx
MDYwMloYDzIxMjYxMTA4MTEwNjAyWjAjMSEwHwYDVQQDDBhMYXRjaGtleSB0ZXN0
IGZpeHR1cmUgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQhq0u6dqbWY3Sy
EANv7e3fV33eZGpuxRVqot9/qWYcZf4iD3dTgzmKVEsBzw30kFH3gV/cn6t3IKOY
tDzEfY4Io1MwUTAdBgNVHQ4EFgQUsl8y84UPi6tCMgQnrpVAyBchLLkwHwYDVR0j
BBgwFoAUsl8y84UPi6tCMgQnrpVAyBchLLkwDwYDVR0TAQH/BAUwAwEB/zAKBggq
hkjOPQQDAgNIADBFAiEAyzSKH38AXu7krftUKudYf2XcCgA4P3jnirUQ6CejsRAC
IGOmsdOhq4Of07mf+ar+8kUUTjnS2Bma+U6bfcS7fhTM
-----END CERTIFICATE-----
";
