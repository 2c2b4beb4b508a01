//! The emulator's token-signing key (ES256) and its JWKS entry.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};

pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    pub kid: String,
    pub jwk: Value,
}

impl Keys {
    pub fn generate() -> Result<Self, crate::Error> {
        let kp = rcgen::KeyPair::generate()?;
        let raw = kp.public_key_raw();
        // Uncompressed P-256 point: 0x04 || X || Y.
        let (x, y) = (&raw[1..33], &raw[33..65]);
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let kid = b64(&sha2_digest(raw))[..16].to_string();
        let encoding = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes())
            .map_err(|e| crate::Error::Key(e.to_string()))?;
        let decoding = DecodingKey::from_ec_components(&b64(x), &b64(y))
            .map_err(|e| crate::Error::Key(e.to_string()))?;
        let jwk = json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid, "x": b64(x), "y": b64(y)});
        Ok(Self {
            encoding,
            decoding,
            kid,
            jwk,
        })
    }

    /// Signs `claims` as a JWT.
    pub fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.encoding).expect("ES256 signing")
    }

    /// Verifies a token this emulator issued; returns its claims.
    pub fn verify(&self, token: &str) -> Result<Value, String> {
        let mut v = Validation::new(Algorithm::ES256);
        v.validate_aud = false;
        v.leeway = 0;
        jsonwebtoken::decode::<Value>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| format!("{:?}", e.kind()))
    }
}

fn sha2_digest(b: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(b).to_vec()
}
