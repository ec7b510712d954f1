# shellcheck shell=bash
# The test certificates of dev/services (sourced by it): once per state
# directory, a test certificate authority and a server certificate in
# <state dir>/tls, made with openssl (EC P-256, valid ten years). See the
# TLS paragraph of dev/services' header for what each file is for.

TLS_DIR="$DEV_DIR/tls"
# Password of the PKCS#12 copy of the server key (a test key; Kafka's
# keystore needs one).
TLS_P12_PASSWORD=relaybox

# The openssl commands of tls_ensure, run in directory $1.
tls_generate() {
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  local ca_ext=(-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign)
  cd "$1" &&
    openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 3650 \
      -subj "/CN=relaybox test CA" "${ca_ext[@]}" &&
    openssl req -x509 "${ec[@]}" -keyout other-ca.key -out other-ca.pem -days 3650 \
      -subj "/CN=relaybox unrelated test CA" "${ca_ext[@]}" &&
    openssl req -new "${ec[@]}" -keyout server.key -out server.csr -subj "/CN=localhost" &&
    printf '%s\n' subjectAltName=DNS:localhost basicConstraints=critical,CA:FALSE \
      keyUsage=critical,digitalSignature,keyEncipherment extendedKeyUsage=serverAuth >server.ext &&
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
      -out server.pem -days 3650 -extfile server.ext &&
    openssl pkcs12 -export -in server.pem -inkey server.key -certfile ca.pem \
      -name localhost -out server.p12 -passout "pass:$TLS_P12_PASSWORD" &&
    rm -f server.csr server.ext ca.srl &&
    chmod 600 ./*.key server.p12 &&
    chmod 755 . &&
    date -u >.complete
}

# Creates the test CAs and the server certificate in TLS_DIR once (see the
# header); a complete set is marked by .complete.
tls_ensure() {
  [[ -f "$TLS_DIR/.complete" ]] && return 0
  command -v openssl >/dev/null 2>&1 || apt_install openssl ||
    die "openssl is needed to create the test certificates: install it (apt-get install openssl)"
  local tmp out
  mkdir -p "$DEV_DIR"
  rm -rf "$TLS_DIR"
  tmp="$(mktemp -d "$DEV_DIR/tls.tmp.XXXXXX")"
  if ! out="$(tls_generate "$tmp" 2>&1 </dev/null)"; then
    printf '%s\n' "$out" >&2
    rm -rf "$tmp"
    die "openssl could not create the test certificates"
  fi
  mv "$tmp" "$TLS_DIR"
  log "created the test CAs and server certificate in $TLS_DIR"
}

env_tls() {
  env_line RELAYBOX_TLS_CA "$TLS_DIR/ca.pem"
  env_line RELAYBOX_TLS_OTHER_CA "$TLS_DIR/other-ca.pem"
}

