#!/usr/bin/env bash
# The project's copy of ../shared/tools/install-step.sh, so a machine without ../shared builds step too.
# install-step.sh — build the smallstep `step` CLI (0.15.16) and `step-ca`
# server (0.19.0) on Debian bookworm (amd64) using only Debian's apt archive:
#   * Go 1.19 (golang-go) and Go library sources from bookworm -dev packages;
#   * the full step CLI source from Debian's source package (orig tarball),
#     because golang-github-smallstep-cli-dev ships only a library subset;
#   * golang-github-zmap-{zcrypto,zlint}-dev .debs from Debian trixie (source
#     only, extracted, not installed) in place of smallstep's zcrypto/zlint forks.
# Small local shims/patches (embedded below) make the 2021 CLI build against
# certificates 0.19.0; `cmd/` mains are not shipped in the -dev packages.
#
# Usage: install-step.sh [PREFIX]      (default: /usr/local/bin)
# Env:   STEP_BUILD_DIR  work dir (default: /var/tmp/step-build)
#        STEP_REBUILD=1  rebuild even if PREFIX already has matching binaries
# Idempotent: re-running re-creates the source tree, reuses downloads and the
# Go build cache, and reinstalls the binaries.
set -euo pipefail

PREFIX="${1:-${PREFIX:-/usr/local/bin}}"
WORK="${STEP_BUILD_DIR:-/var/tmp/step-build}"
STEP_VERSION=0.15.16
STEPCA_VERSION=0.19.0
CLI_SRC_PKG=golang-github-smallstep-cli
TRIXIE_DEBS="golang-github-zmap-zcrypto-dev golang-github-zmap-zlint-dev"

log() { printf '[install-step] %s\n' "$*" >&2; }
# The main Debian archive this machine's apt already uses (deb822 or one-line form).
debian_mirror() {
  { grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
    grep -h '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}'
  } | grep -v -- '-security' | grep '/debian/*$' | head -n1 || true
}
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { log "need root (or sudo) for apt-get"; exit 1; }
  SUDO=sudo
fi

if [ "${STEP_REBUILD:-0}" != 1 ] && [ -x "$PREFIX/step" ] && [ -x "$PREFIX/step-ca" ] \
   && "$PREFIX/step" version 2>/dev/null | grep -q "CLI/$STEP_VERSION " \
   && "$PREFIX/step-ca" version 2>/dev/null | grep -q "CA/$STEPCA_VERSION "; then
  log "step $STEP_VERSION and step-ca $STEPCA_VERSION already in $PREFIX (STEP_REBUILD=1 to force)"
  exit 0
fi

# --- 1. Debian packages (bookworm main) --------------------------------------
export DEBIAN_FRONTEND=noninteractive
log "apt-get update / install"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  golang-go gcc libc6-dev pkg-config libzstd-dev patch ca-certificates curl \
  golang-github-smallstep-certificates-dev golang-github-smallstep-cli-dev \
  golang-github-pquerna-otp-dev golang-sslmate-src-go-pkcs12-dev \
  golang-github-smallstep-truststore-dev \
  golang-github-shurcool-sanitized-anchor-name-dev \
  golang-github-weppos-publicsuffix-go-dev golang-github-zmap-rc2-dev \
  golang-github-mreiferson-go-httpclient-dev golang-github-op-go-logging-dev \
  golang-github-pelletier-go-toml-dev >/dev/null

# --- 2. Source tarball + trixie source .debs via a private apt config -------
# (does not touch /etc/apt; only the Debian mirror already configured in
#  /etc/apt is contacted)
mkdir -p "$WORK"/apt/lists/partial "$WORK"/apt/cache/archives/partial "$WORK"/apt/sources.list.d "$WORK"/dl
MIRROR="${STEP_DEBIAN_MIRROR:-$(debian_mirror)}"
[ -n "$MIRROR" ] || { log "cannot find the Debian mirror in /etc/apt; set STEP_DEBIAN_MIRROR"; exit 1; }
cat >"$WORK/apt/sources.list" <<EOF
deb-src $MIRROR bookworm main
deb $MIRROR trixie main
EOF
APT_OPTS=(-o "Dir::Etc::sourcelist=$WORK/apt/sources.list"
          -o "Dir::Etc::sourceparts=$WORK/apt/sources.list.d"
          -o "Dir::State::lists=$WORK/apt/lists" -o "Dir::Cache=$WORK/apt/cache"
          -o "APT::Sandbox::User=root" -o "Acquire::Languages=none")
log "private apt index (bookworm sources + trixie)"
apt-get "${APT_OPTS[@]}" update -qq

# orig tarball of the CLI (full upstream tree incl. cmd/step); verified by sha256
line=$(apt-get "${APT_OPTS[@]}" source --print-uris "$CLI_SRC_PKG" 2>/dev/null | grep "\.orig\.tar\." | head -n1)
[ -n "$line" ] || { log "cannot find orig tarball of $CLI_SRC_PKG"; exit 1; }
url=$(echo "$line" | awk '{print $1}' | tr -d "'"); file=$(echo "$line" | awk '{print $2}')
hash=$(echo "$line" | awk '{print $4}')
if [ ! -s "$WORK/dl/$file" ] || ! echo "${hash#SHA256:}  $WORK/dl/$file" | sha256sum -c --status; then
  log "download $file"
  /usr/lib/apt/apt-helper -o APT::Sandbox::User=root download-file "$url" "$WORK/dl/$file" "$hash" >/dev/null
fi
CLI_TARBALL="$WORK/dl/$file"

(cd "$WORK/dl" && rm -f ./*.deb && apt-get "${APT_OPTS[@]}" download -qq $TRIXIE_DEBS 2>/dev/null)
ls "$WORK"/dl/golang-github-zmap-zcrypto-dev_*.deb "$WORK"/dl/golang-github-zmap-zlint-dev_*.deb >/dev/null

# --- 3. GOPATH tree ---------------------------------------------------------
rm -rf "$WORK/gopath" "$WORK/extra"
mkdir -p "$WORK/extra"
for d in "$WORK"/dl/*.deb; do dpkg-deb -x "$d" "$WORK/extra"; done
CLI="$WORK/gopath/src/github.com/smallstep/cli"
mkdir -p "$CLI"
tar -xzf "$CLI_TARBALL" -C "$CLI" --strip-components=1
# Debian's patched files (blackfriday v2 port) take precedence over the orig tree.
cp -a /usr/share/gocode/src/github.com/smallstep/cli/. "$CLI/"

# 3a. small source adjustments
sed -i '\#"github.com/smallstep/certificates/cas/cloudcas"#d' "$CLI/cmd/step/main.go"   # not in Debian
sed -i 's#"github.com/smallstep/zcrypto/x509"#"github.com/zmap/zcrypto/x509"#' \
  "$CLI/command/certificate/inspect.go" "$CLI/command/certificate/lint.go"
sed -i 's#"github.com/smallstep/zlint"#zlint "github.com/zmap/zlint/v3"#' "$CLI/command/certificate/lint.go"
sed -i 's/^\tw.Write(Render(b))$/\tw.Write(safeRender(b))/' "$CLI/usage/printer.go"
grep -q 'safeRender(b)' "$CLI/usage/printer.go"
cat >"$CLI/usage/saferender.go" <<'GOEOF'
package usage

// safeRender renders help markdown; Debian's port of this renderer to the
// packaged blackfriday/v2 panics on some help pages, so fall back to the
// unrendered text instead of crashing the CLI.
func safeRender(b []byte) (out []byte) {
	defer func() {
		if r := recover(); r != nil {
			out = b
		}
	}()
	return Render(b)
}
GOEOF

# 3b. port 'step ca init' to the pki API of certificates 0.19.0
(cd "$CLI" && patch -s -p1 <<'PATCHEOF'
--- a/command/ca/init.go
+++ b/command/ca/init.go
@@ -232,11 +232,7 @@
 		}
 	}
 
-	p, err := pki.New(casOptions)
-	if err != nil {
-		return err
-	}
-
+	var pkiOpts []pki.Option
 	if configure {
 		var names string
 		ui.Println("What DNS names or IP addresses would you like to add to your new CA?", ui.WithValue(ctx.String("dns")))
@@ -271,10 +267,25 @@
 			return err
 		}
 
-		p.SetProvisioner(provisioner)
-		p.SetAddress(address)
-		p.SetDNSNames(dnsNames)
-		p.SetCAURL(caURL)
+		pkiOpts = append(pkiOpts, pki.WithProvisioner(provisioner),
+			pki.WithAddress(address), pki.WithDNSNames(dnsNames))
+		if caURL != "" {
+			pkiOpts = append(pkiOpts, pki.WithCaURL(caURL))
+		}
+	} else {
+		pkiOpts = append(pkiOpts, pki.WithPKIOnly())
+	}
+	if noDB {
+		pkiOpts = append(pkiOpts, pki.WithNoDB())
+	}
+	if ctx.Bool("ssh") {
+		pkiOpts = append(pkiOpts, pki.WithSSH())
+	}
+
+	// certificates >= 0.18 takes the settings as constructor options.
+	p, err := pki.New(casOptions, pkiOpts...)
+	if err != nil {
+		return err
 	}
 
 	ui.Println("Choose a password for your CA keys and first provisioner.", ui.WithValue(password))
@@ -345,15 +356,8 @@
 
 	fmt.Println("all done!")
 
-	if !configure {
-		p.TellPKI()
-		return nil
-	}
-	opts := []pki.Option{}
-	if noDB {
-		opts = append(opts, pki.WithoutDB())
-	}
-	return p.Save(opts...)
+	// With WithPKIOnly, Save only writes the key material and lists it.
+	return p.Save()
 }
 
 // assertCryptoRand asserts that a cryptographically secure random number
PATCHEOF
)

# 3c. github.com/smallstep/certinfo is not packaged: minimal local stand-in (text output only)
mkdir -p "$WORK/gopath/src/github.com/smallstep/certinfo"
cat >"$WORK/gopath/src/github.com/smallstep/certinfo/certinfo.go" <<'GOEOF'
// Package certinfo is a small stand-in for github.com/smallstep/certinfo,
// which is not packaged in Debian. It renders a reduced, human-readable
// summary of certificates and CSRs for `step certificate inspect` (text mode).
// JSON output of `step certificate inspect` does not use this package.
package certinfo

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"math/big"
	"strings"
	"time"
)

func serial(n *big.Int) string {
	if n == nil {
		return "<nil>"
	}
	return fmt.Sprintf("%d (0x%s)", n, strings.ToUpper(n.Text(16)))
}

func sans(dns []string, ips []fmt.Stringer, emails []string, uris []string) string {
	var out []string
	for _, d := range dns {
		out = append(out, "DNS:"+d)
	}
	for _, ip := range ips {
		out = append(out, "IP Address:"+ip.String())
	}
	for _, e := range emails {
		out = append(out, "email:"+e)
	}
	for _, u := range uris {
		out = append(out, "URI:"+u)
	}
	return strings.Join(out, ", ")
}

func certSANs(c *x509.Certificate) string {
	ips := make([]fmt.Stringer, len(c.IPAddresses))
	for i := range c.IPAddresses {
		ips[i] = c.IPAddresses[i]
	}
	uris := make([]string, len(c.URIs))
	for i := range c.URIs {
		uris[i] = c.URIs[i].String()
	}
	return sans(c.DNSNames, ips, c.EmailAddresses, uris)
}

func keyUsages(c *x509.Certificate) string {
	names := []struct {
		u x509.KeyUsage
		n string
	}{
		{x509.KeyUsageDigitalSignature, "Digital Signature"},
		{x509.KeyUsageContentCommitment, "Content Commitment"},
		{x509.KeyUsageKeyEncipherment, "Key Encipherment"},
		{x509.KeyUsageDataEncipherment, "Data Encipherment"},
		{x509.KeyUsageKeyAgreement, "Key Agreement"},
		{x509.KeyUsageCertSign, "Certificate Sign"},
		{x509.KeyUsageCRLSign, "CRL Sign"},
		{x509.KeyUsageEncipherOnly, "Encipher Only"},
		{x509.KeyUsageDecipherOnly, "Decipher Only"},
	}
	var out []string
	for _, x := range names {
		if c.KeyUsage&x.u != 0 {
			out = append(out, x.n)
		}
	}
	return strings.Join(out, ", ")
}

func extKeyUsages(c *x509.Certificate) string {
	var out []string
	for _, u := range c.ExtKeyUsage {
		switch u {
		case x509.ExtKeyUsageServerAuth:
			out = append(out, "Server Authentication")
		case x509.ExtKeyUsageClientAuth:
			out = append(out, "Client Authentication")
		case x509.ExtKeyUsageCodeSigning:
			out = append(out, "Code Signing")
		case x509.ExtKeyUsageEmailProtection:
			out = append(out, "E-mail Protection")
		case x509.ExtKeyUsageTimeStamping:
			out = append(out, "Time Stamping")
		case x509.ExtKeyUsageOCSPSigning:
			out = append(out, "OCSP Signing")
		default:
			out = append(out, fmt.Sprintf("ExtKeyUsage(%d)", u))
		}
	}
	return strings.Join(out, ", ")
}

// CertificateText returns a multi-line summary of the certificate.
func CertificateText(c *x509.Certificate) (string, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "Certificate:\n")
	fmt.Fprintf(&b, "    Data:\n")
	fmt.Fprintf(&b, "        Version: %d (0x%x)\n", c.Version, c.Version-1)
	fmt.Fprintf(&b, "        Serial Number: %s\n", serial(c.SerialNumber))
	fmt.Fprintf(&b, "    Signature Algorithm: %s\n", c.SignatureAlgorithm)
	fmt.Fprintf(&b, "        Issuer: %s\n", c.Issuer)
	fmt.Fprintf(&b, "        Validity\n")
	fmt.Fprintf(&b, "            Not Before: %s\n", c.NotBefore.UTC().Format(time.RFC1123))
	fmt.Fprintf(&b, "            Not After : %s\n", c.NotAfter.UTC().Format(time.RFC1123))
	fmt.Fprintf(&b, "        Subject: %s\n", c.Subject)
	fmt.Fprintf(&b, "        Subject Public Key Info:\n")
	fmt.Fprintf(&b, "            Public Key Algorithm: %s\n", c.PublicKeyAlgorithm)
	fmt.Fprintf(&b, "        X509v3 extensions:\n")
	if ku := keyUsages(c); ku != "" {
		fmt.Fprintf(&b, "            X509v3 Key Usage:\n                %s\n", ku)
	}
	if eku := extKeyUsages(c); eku != "" {
		fmt.Fprintf(&b, "            X509v3 Extended Key Usage:\n                %s\n", eku)
	}
	if c.BasicConstraintsValid {
		fmt.Fprintf(&b, "            X509v3 Basic Constraints:\n                CA:%t", c.IsCA)
		if c.IsCA && (c.MaxPathLen > 0 || c.MaxPathLenZero) {
			fmt.Fprintf(&b, ", pathlen:%d", c.MaxPathLen)
		}
		fmt.Fprintln(&b)
	}
	if len(c.SubjectKeyId) > 0 {
		fmt.Fprintf(&b, "            X509v3 Subject Key Identifier:\n                %s\n", strings.ToUpper(hex.EncodeToString(c.SubjectKeyId)))
	}
	if len(c.AuthorityKeyId) > 0 {
		fmt.Fprintf(&b, "            X509v3 Authority Key Identifier:\n                keyid:%s\n", strings.ToUpper(hex.EncodeToString(c.AuthorityKeyId)))
	}
	if s := certSANs(c); s != "" {
		fmt.Fprintf(&b, "            X509v3 Subject Alternative Name:\n                %s\n", s)
	}
	fmt.Fprintf(&b, "    Signature Algorithm: %s\n", c.SignatureAlgorithm)
	return b.String(), nil
}

// CertificateShortText returns a short summary of the certificate.
func CertificateShortText(c *x509.Certificate) (string, error) {
	var b bytes.Buffer
	kind := "TLS"
	if c.IsCA {
		kind = "CA"
	}
	fmt.Fprintf(&b, "X.509v3 %s Certificate (%s) [Serial: %s]\n", kind, c.PublicKeyAlgorithm, c.SerialNumber)
	fmt.Fprintf(&b, "  Subject:     %s\n", c.Subject.CommonName)
	if s := certSANs(c); s != "" {
		fmt.Fprintf(&b, "  SANs:        %s\n", s)
	}
	fmt.Fprintf(&b, "  Issuer:      %s\n", c.Issuer.CommonName)
	fmt.Fprintf(&b, "  Valid from:  %s\n", c.NotBefore.UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "          to:  %s\n", c.NotAfter.UTC().Format(time.RFC3339))
	return b.String(), nil
}

func csrSANs(r *x509.CertificateRequest) string {
	ips := make([]fmt.Stringer, len(r.IPAddresses))
	for i := range r.IPAddresses {
		ips[i] = r.IPAddresses[i]
	}
	uris := make([]string, len(r.URIs))
	for i := range r.URIs {
		uris[i] = r.URIs[i].String()
	}
	return sans(r.DNSNames, ips, r.EmailAddresses, uris)
}

// CertificateRequestText returns a multi-line summary of the CSR.
func CertificateRequestText(r *x509.CertificateRequest) (string, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "Certificate Request:\n")
	fmt.Fprintf(&b, "    Data:\n")
	fmt.Fprintf(&b, "        Version: %d\n", r.Version)
	fmt.Fprintf(&b, "        Subject: %s\n", r.Subject)
	fmt.Fprintf(&b, "        Subject Public Key Info:\n")
	fmt.Fprintf(&b, "            Public Key Algorithm: %s\n", r.PublicKeyAlgorithm)
	if s := csrSANs(r); s != "" {
		fmt.Fprintf(&b, "        Requested Extensions:\n")
		fmt.Fprintf(&b, "            X509v3 Subject Alternative Name:\n                %s\n", s)
	}
	fmt.Fprintf(&b, "    Signature Algorithm: %s\n", r.SignatureAlgorithm)
	return b.String(), nil
}

// CertificateRequestShortText returns a short summary of the CSR.
func CertificateRequestShortText(r *x509.CertificateRequest) (string, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "X.509v3 Certificate Signing Request (%s)\n", r.PublicKeyAlgorithm)
	fmt.Fprintf(&b, "  Subject:     %s\n", r.Subject.CommonName)
	if s := csrSANs(r); s != "" {
		fmt.Fprintf(&b, "  SANs:        %s\n", s)
	}
	return b.String(), nil
}
GOEOF

# 3d. step-ca main package (cmd/ is not shipped in the -dev package)
mkdir -p "$WORK/gopath/src/stepbuild/step-ca"
cat >"$WORK/gopath/src/stepbuild/step-ca/main.go" <<'GOEOF'
// Minimal entry point for step-ca built from Debian's
// golang-github-smallstep-certificates-dev sources (cmd/ is not shipped there).
package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/smallstep/certificates/authority"
	"github.com/smallstep/certificates/commands"
	"github.com/urfave/cli"
	"go.step.sm/cli-utils/command"
	"go.step.sm/cli-utils/command/version"
	"go.step.sm/cli-utils/step"
	"go.step.sm/cli-utils/usage"

	// Key managers and CA back ends available in Debian's source package.
	_ "github.com/smallstep/certificates/cas/softcas"
	_ "github.com/smallstep/certificates/cas/stepcas"
	_ "github.com/smallstep/certificates/kms/softkms"
	_ "github.com/smallstep/certificates/kms/sshagentkms"
)

// Version and BuildTime can be overridden with -ldflags -X.
var (
	Version   = "0.19.0-debian"
	BuildTime = "N/A"
)

func main() {
	step.Set("Smallstep CA", Version, BuildTime)
	authority.GlobalVersion.Version = Version

	cli.VersionPrinter = func(c *cli.Context) { version.Command(c) }
	cli.AppHelpTemplate = usage.AppHelpTemplate
	cli.SubcommandHelpTemplate = usage.SubcommandHelpTemplate
	cli.CommandHelpTemplate = usage.CommandHelpTemplate
	cli.HelpPrinter = func(w io.Writer, templ string, data interface{}) {
		defer func() {
			if r := recover(); r != nil {
				fmt.Fprintln(w, "step-ca <config> [--password-file=<file>]")
			}
		}()
		usage.HelpPrinter(w, templ, data)
	}
	cli.FlagNamePrefixer = usage.FlagNamePrefixer

	app := cli.NewApp()
	app.Name = "step-ca"
	app.HelpName = "step-ca"
	app.Version = step.Version()
	app.Usage = "an online certificate authority for secure automated certificate management"
	app.UsageText = "step-ca <config> [--password-file=<file>] [--context=<name>] [--resolver=<addr>]"
	app.Flags = append(app.Flags, commands.AppCommand.Flags...)
	app.Flags = append(app.Flags, cli.HelpFlag)
	app.Writer = os.Stdout
	app.ErrWriter = os.Stderr
	app.Commands = command.Retrieve()
	app.Action = func(_ *cli.Context) error {
		// Run the "start" command with the full argument vector so that the
		// positional <config> and the flags are parsed by that command.
		set := flag.NewFlagSet(app.Name, flag.ContinueOnError)
		_ = set.Parse(os.Args)
		return commands.AppCommand.Run(cli.NewContext(app, set, nil))
	}
	if err := app.Run(os.Args); err != nil {
		if os.Getenv("STEPDEBUG") == "1" {
			fmt.Fprintf(os.Stderr, "%+v\n", err)
		} else {
			fmt.Fprintln(os.Stderr, err)
		}
		os.Exit(1)
	}
}
GOEOF

# --- 4. build -----------------------------------------------------------------
export GO111MODULE=off GOFLAGS= GOPROXY=off GOTOOLCHAIN=local
export GOPATH="$WORK/gopath:$WORK/extra/usr/share/gocode:/usr/share/gocode"
export GOCACHE="$WORK/gocache" CGO_ENABLED=1
BT=$(date -u '+%Y-%m-%d %H:%M UTC')
mkdir -p "$WORK/bin"
log "go build step-ca ($(go version | awk '{print $3}'))"
go build -trimpath -ldflags "-s -w -X main.Version=$STEPCA_VERSION -X 'main.BuildTime=$BT'" \
  -o "$WORK/bin/step-ca" stepbuild/step-ca 2> >(grep -v -e zstd -e cgo-gcc -e ZSTD -e '^ *[0-9]* |' -e '^ *|' >&2)
log "go build step"
go build -trimpath -ldflags "-s -w -X main.Version=$STEP_VERSION -X 'main.BuildTime=$BT'" \
  -o "$WORK/bin/step" github.com/smallstep/cli/cmd/step 2> >(grep -v -e zstd -e cgo-gcc -e ZSTD -e '^ *[0-9]* |' -e '^ *|' >&2)

# --- 5. install -----------------------------------------------------------------
$SUDO mkdir -p "$PREFIX"
$SUDO install -m 0755 "$WORK/bin/step" "$WORK/bin/step-ca" "$PREFIX/"
"$PREFIX/step" version | head -n1 >&2
"$PREFIX/step-ca" version | head -n1 >&2
log "installed step and step-ca into $PREFIX"
