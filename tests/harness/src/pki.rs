//! Test PKI: a CA, the apiserver's serving certificate, an admin client certificate
//! (O=system:masters) and the ServiceAccount token signing key, written as PEM files.

use std::path::Path;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::Error;

pub struct Pki {
    pub ca_pem: String,
    admin_cert: String,
    admin_key: String,
}

fn dn(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

impl Pki {
    /// Generates everything into `dir`: ca.crt, serving.{crt,key}, admin.{crt,key}, sa.key.
    pub fn generate(dir: &Path) -> Result<Pki, Error> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name = dn("podid-test-ca", None);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let serving_key = KeyPair::generate()?;
        let mut serving = CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default.svc".to_string(),
            "10.0.0.1".to_string(),
        ])?;
        serving.distinguished_name = dn("kube-apiserver", None);
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving.signed_by(&serving_key, &issuer)?;

        let admin_key = KeyPair::generate()?;
        let mut admin = CertificateParams::new(Vec::<String>::new())?;
        admin.distinguished_name = dn("podid-admin", Some("system:masters"));
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert = admin.signed_by(&admin_key, &issuer)?;

        std::fs::write(dir.join("ca.crt"), ca_cert.pem())?;
        std::fs::write(dir.join("serving.crt"), serving_cert.pem())?;
        std::fs::write(dir.join("serving.key"), serving_key.serialize_pem())?;
        std::fs::write(dir.join("admin.crt"), admin_cert.pem())?;
        std::fs::write(dir.join("admin.key"), admin_key.serialize_pem())?;
        std::fs::write(dir.join("sa.key"), sa_signing_key()?)?;
        Ok(Pki {
            ca_pem: ca_cert.pem(),
            admin_cert: admin_cert.pem(),
            admin_key: admin_key.serialize_pem(),
        })
    }

    /// An admin kubeconfig for `server`, with everything inline.
    pub fn kubeconfig(&self, server: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: podid-test\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: podid-admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: podid-test\n  context:\n    cluster: podid-test\n    user: podid-admin\ncurrent-context: podid-test\n",
            b64(&self.ca_pem),
            b64(&self.admin_cert),
            b64(&self.admin_key),
        )
    }
}

/// The ServiceAccount signing key: RSA 2048 like AKS issuers (RS256 tokens) when `openssl` is
/// available, else ECDSA P-256 (ES256).
fn sa_signing_key() -> Result<String, Error> {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        _ => Ok(KeyPair::generate()?.serialize_pem()),
    }
}

/// A throwaway CA and a serving certificate signed by it for `names` (DNS names or IP
/// addresses), for servers the API server calls (admission webhooks):
/// (CA PEM, certificate PEM, key PEM).
pub fn serving_pair(cn: &str, names: &[&str]) -> Result<(String, String, String), Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = dn(&format!("{cn}-ca"), None);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    params.distinguished_name = dn(cn, None);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer)?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}
