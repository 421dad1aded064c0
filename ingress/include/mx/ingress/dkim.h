// dkim.h — DKIM signing at ingress (RFC 6376; Ed25519 per RFC 8463).
//
// Keys are per signing domain: a message whose From: domain (or a parent of
// it) has keys gets one DKIM-Signature per key, relaxed/relaxed, rsa-sha256
// or ed25519-sha256 by the key's type. Loading fails with the config key
// named; signing fails only on an OpenSSL error (the caller answers 451).
// A signer is immutable once loaded and may be shared across threads.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "mx/common/config.h"
#include "mx/common/result.h"

namespace mx::ingress {

// RFC 6376 3.4.2: "A: X" -> "a:X\r\n" (one header field, with or without
// its CRLF; continuation lines included).
std::string DkimRelaxedHeader(std::string_view field);
// RFC 6376 3.4.4: the canonical body (empty lines at the end dropped; an
// empty body stays empty).
std::string DkimRelaxedBody(std::string_view body);
// The domain of the first mailbox in a From: value ("" when there is none).
std::string FromDomain(std::string_view from_value);

class DkimSigner {
 public:
  struct Signed {
    std::string headers;                  // DKIM-Signature fields to put on top, CRLF-terminated
    std::string domain;                   // d=
    std::vector<std::string> algorithms;  // a= per signature, in order
  };

  // Reads every key file; errors name "ingress.dkim.keys[i]".
  static Result<std::shared_ptr<const DkimSigner>> Load(const DkimConfig& config);
  DkimSigner(DkimSigner&&) noexcept;
  ~DkimSigner();

  bool empty() const { return keys_.empty(); }
  size_t size() const { return keys_.size(); }
  // The signing domain for a From: domain: itself or its nearest parent with
  // keys ("" when none).
  std::string DomainFor(std::string_view from_domain) const;

  // Signs message (header block, empty line, body), with prefix: header
  // fields the caller puts above it (e.g. a Message-ID it adds), counted as
  // part of the header block. Nothing to sign (no From:, no key for its
  // domain): an empty result. now_unix: t= (and x= with a signature TTL).
  Result<Signed> Sign(std::string_view prefix, std::string_view message, int64_t now_unix) const;

 private:
  struct Key;
  DkimSigner() = default;
  std::vector<std::unique_ptr<Key>> keys_;  // in config order
  std::vector<std::string> headers_;        // lower-case names to sign
  bool oversign_ = true;
  int64_t ttl_s_ = 0;
};

}  // namespace mx::ingress
