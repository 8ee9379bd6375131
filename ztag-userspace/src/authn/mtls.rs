//! Who a verified client certificate names. The TLS layer has already
//! verified the chain against `client_ca` and the validity period; this
//! only reads the identity from the leaf, as configured: the URI SAN (a
//! SPIFFE ID: exactly one URI SAN, as X.509-SVIDs have), the first DNS
//! SAN, or the subject's first CN. A certificate without such a name (or
//! whose name could not be passed on safely in a header) is refused
//! (`certificate_no_identity`), never given an empty or default identity.

use std::sync::Arc;

use x509_parser::{extensions::GeneralName, parse_x509_certificate};

use super::{Method, Principal, config::SubjectFrom, reason, token::Claims};

/// `[authn.mtls]`.
#[derive(Debug)]
pub(crate) struct MtlsProvider {
    pub name: Arc<str>,
    from: SubjectFrom,
    no_claims: Arc<Claims>,
}

/// Longest identity taken from a certificate.
const MAX_IDENTITY_BYTES: usize = 1024;

impl MtlsProvider {
    pub fn new(name: &str, from: SubjectFrom) -> MtlsProvider {
        MtlsProvider {
            name: name.into(),
            from,
            no_claims: Arc::default(),
        }
    }

    /// The principal of a verified leaf certificate (DER).
    pub fn verify(&self, der: &[u8]) -> Result<Principal, &'static str> {
        let (rest, cert) = parse_x509_certificate(der).map_err(|_| reason::CERTIFICATE_INVALID)?;
        if !rest.is_empty() {
            return Err(reason::CERTIFICATE_INVALID);
        }
        let sans = || {
            cert.subject_alternative_name()
                .ok()
                .flatten()
                .map(|e| e.value.general_names.clone())
                .unwrap_or_default()
        };
        let subject: Option<String> = match self.from {
            SubjectFrom::SanUri => {
                let uris: Vec<&str> = sans()
                    .into_iter()
                    .filter_map(|g| match g {
                        GeneralName::URI(u) => Some(u),
                        _ => None,
                    })
                    .collect();
                match uris.as_slice() {
                    [one] => Some(one.to_string()),
                    _ => None,
                }
            }
            SubjectFrom::SanDns => sans().into_iter().find_map(|g| match g {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            }),
            SubjectFrom::Cn => cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_string),
        };
        let subject = subject
            .filter(|s| {
                !s.is_empty()
                    && s.len() <= MAX_IDENTITY_BYTES
                    && s.bytes().all(|b| (0x20..0x7f).contains(&b))
            })
            .ok_or(reason::CERTIFICATE_NO_IDENTITY)?;
        let not_after = cert.validity().not_after.timestamp();
        Ok(Principal {
            provider: self.name.clone(),
            method: Method::Mtls,
            subject,
            issuer: None,
            client_id: None,
            scopes: Vec::new(),
            claims: self.no_claims.clone(),
            expires_at: u64::try_from(not_after).ok(),
        })
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    use super::*;

    fn cert(cn: Option<&str>, sans: Vec<SanType>) -> Vec<u8> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        p.subject_alt_names = sans;
        let k = KeyPair::generate().unwrap();
        p.self_signed(&k).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    fn dns(s: &str) -> SanType {
        SanType::DnsName(s.try_into().unwrap())
    }

    #[test]
    fn identities_come_from_the_configured_field() {
        let der = cert(
            Some("billing"),
            vec![
                dns("billing.svc"),
                uri("spiffe://corp/billing"),
                dns("b.svc"),
            ],
        );
        let p = MtlsProvider::new("mtls", SubjectFrom::SanUri)
            .verify(&der)
            .unwrap();
        assert_eq!(p.subject, "spiffe://corp/billing");
        assert_eq!(p.method, Method::Mtls);
        assert!(p.expires_at.is_some());
        let p = MtlsProvider::new("mtls", SubjectFrom::SanDns)
            .verify(&der)
            .unwrap();
        assert_eq!(p.subject, "billing.svc");
        let p = MtlsProvider::new("mtls", SubjectFrom::Cn)
            .verify(&der)
            .unwrap();
        assert_eq!(p.subject, "billing");
    }

    #[test]
    fn a_certificate_without_the_name_is_refused() {
        let no_names = cert(None, vec![]);
        for f in [SubjectFrom::SanUri, SubjectFrom::SanDns, SubjectFrom::Cn] {
            assert_eq!(
                MtlsProvider::new("m", f).verify(&no_names).err(),
                Some(reason::CERTIFICATE_NO_IDENTITY),
                "{f:?}"
            );
        }
        let two_uris = cert(None, vec![uri("spiffe://a/x"), uri("spiffe://a/y")]);
        assert_eq!(
            MtlsProvider::new("m", SubjectFrom::SanUri)
                .verify(&two_uris)
                .err(),
            Some(reason::CERTIFICATE_NO_IDENTITY)
        );
        assert_eq!(
            MtlsProvider::new("m", SubjectFrom::Cn)
                .verify(b"not DER")
                .err(),
            Some(reason::CERTIFICATE_INVALID)
        );
        let mut trailing = cert(Some("x"), vec![]);
        trailing.push(0);
        assert_eq!(
            MtlsProvider::new("m", SubjectFrom::Cn)
                .verify(&trailing)
                .err(),
            Some(reason::CERTIFICATE_INVALID)
        );
    }
}
