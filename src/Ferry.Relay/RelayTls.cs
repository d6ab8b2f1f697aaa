using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using Ferry.Core.Security;

namespace Ferry.Relay;

/// <summary>TLS settings and certificate checks shared by the relay server and relay links.</summary>
internal static class RelayTls
{
    /// <summary>ALPN protocol id of the relay link protocol; a mismatch fails the handshake instead of the first frame.</summary>
    public static readonly SslApplicationProtocol Alpn = new("ferry-relay/1");

    /// <summary>
    /// Validates <paramref name="certificate"/> against the deployment CA only: the system trust store plays no part, so a
    /// certificate from any public CA, or from another Ferry deployment, is refused.
    /// </summary>
    public static RelayRefusal Validate(X509Certificate? certificate, X509Certificate2 ca, DateTimeOffset now, out string? identity, out string error)
    {
        identity = null;
        if (certificate is null)
        {
            error = "no certificate presented";
            return RelayRefusal.NoClientCertificate;
        }

        // SslStream always hands over an X509Certificate2 on .NET; anything else is not a certificate we can check.
        if (certificate is not X509Certificate2 leaf)
        {
            error = "certificate of an unexpected type";
            return RelayRefusal.UntrustedCertificate;
        }

        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(ca);
        // Short-lived certificates from our own CA carry no CRL or OCSP endpoints; expiry is the revocation mechanism.
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        chain.ChainPolicy.VerificationTime = now.UtcDateTime;
        chain.ChainPolicy.VerificationTimeIgnored = false;
        chain.ChainPolicy.DisableCertificateDownloads = true;

        // No extended-key-usage policy is demanded: the controller's issuance profile is not settled and a connector's one
        // certificate serves both as QUIC server and as relay client. Trust comes from the CA alone, identity from the CN.
        try
        {
            if (!chain.Build(leaf))
            {
                var statuses = string.Join(", ", chain.ChainStatus.Select(s => s.Status.ToString()));
                error = $"certificate '{leaf.Subject}' does not chain to the deployment CA ({statuses})";
                return RelayRefusal.UntrustedCertificate;
            }

            // CustomRootTrust already anchors at the CA; checking the anchor too guards against a lookalike self-signed root.
            var root = chain.ChainElements[^1].Certificate;
            if (!root.RawDataMemory.Span.SequenceEqual(ca.RawDataMemory.Span))
            {
                error = $"certificate '{leaf.Subject}' chains to '{root.Subject}', not the deployment CA";
                return RelayRefusal.UntrustedCertificate;
            }
        }
        finally
        {
            foreach (var element in chain.ChainElements)
            {
                if (!ReferenceEquals(element.Certificate, leaf) && !ReferenceEquals(element.Certificate, ca))
                {
                    element.Certificate.Dispose();
                }
            }
        }

        identity = PeerIdentity.FromCertificate(leaf);
        if (identity is null)
        {
            error = $"certificate subject '{certificate.Subject}' has no identity CN of the form kind/id";
            return RelayRefusal.BadIdentity;
        }

        error = string.Empty;
        return RelayRefusal.None;
    }
}
