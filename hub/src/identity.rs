//! Who a gateway is: the CN of the client certificate it presented (the TLS layer has already
//! checked that the fleet's CA signed it). Owns the mapping; never trusts a name the request
//! itself carries.

use crate::layout;

/// The gateway a verified client certificate names, or why it names none usable.
pub fn gateway_of(der: &[u8]) -> Result<String, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("unreadable client certificate: {e}"))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or("the client certificate has no subject CN (a gateway certificate's CN is its gateway id)")?;
    if !layout::valid_name(cn, 64) {
        return Err(format!("the client certificate's CN '{cn}' is not a gateway id (1-64 of A-Z a-z 0-9 _ - .)"));
    }
    Ok(cn.to_string())
}
