#!/usr/bin/env bash
# Write a throwaway CA and certificates it signed, for TLS brokers in tests and local runs.
#   scripts/make_tls_certs.sh DIR
# DIR gets ca.crt/ca.key, server.crt/server.key (valid for localhost and 127.0.0.1) and
# client.crt/client.key (for mutual TLS). Keys are unencrypted PKCS#8 PEM, which both
# redis-server and Kafka's PEM key store (ssl.keystore.type=PEM) read as they are.
# The extensions are the ones Python's VERIFY_X509_STRICT (default from 3.13) insists on.
set -euo pipefail

dir="${1:?usage: $0 DIR}"
days=2
mkdir -p "$dir"
cd "$dir"

new_key() { openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null; chmod 600 "$1"; }

new_key ca.key
openssl req -x509 -new -key ca.key -out ca.crt -days "$days" -subj "/CN=llm-worker test CA $RANDOM$RANDOM" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"

sign() {  # sign NAME CN EXTENDED_KEY_USAGE [SUBJECT_ALT_NAME]
  local name="$1" cn="$2" usage="$3" san="${4:-}"
  new_key "$name.key"
  openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$name.csr"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    echo "subjectKeyIdentifier=hash"
    echo "authorityKeyIdentifier=keyid"
    if [[ -n "$san" ]]; then echo "subjectAltName=$san"; fi
  } > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
    -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

sign server localhost serverAuth "DNS:localhost,IP:127.0.0.1"
sign client llm-worker-client clientAuth
rm -f ca.srl
echo "$dir"
