using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Ferry.Core.Security;

namespace Ferry.UnitTests.Security;

public sealed class FingerprintTests
{
    [Theory]
    [InlineData("sha256:AB:CD")]
    [InlineData("nothex")]
    public void Malformed_fingerprints_are_refused_with_the_expected_form(string text)
    {
        var e = Assert.Throws<ArgumentException>(() => ControllerTrust.Create(text, null));
        Assert.Contains("64 hex digits", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Pinned_fingerprint_accepts_that_certificate_only_in_any_spelling()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var right = new CertificateRequest("CN=right", key, HashAlgorithmName.SHA256).CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
        using var wrong = new CertificateRequest("CN=wrong", key, HashAlgorithmName.SHA256).CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
        var hex = CertificateFingerprint.Of(right)["sha256:".Length..];
        var colons = string.Join(':', Enumerable.Range(0, 32).Select(i => hex.Substring(i * 2, 2).ToUpperInvariant()));
        foreach (var spelling in new[] { "sha256:" + hex, hex, colons })
        {
            var trust = ControllerTrust.Create(spelling, null);
            // The chain is untrusted (self-signed): pinning overrides that, but only for this certificate.
            Assert.True(trust.Validate(right, null, SslPolicyErrors.RemoteCertificateChainErrors));
            Assert.False(trust.Validate(wrong, null, SslPolicyErrors.RemoteCertificateChainErrors));
        }
        Assert.False(ControllerTrust.System.Validate(right, null, SslPolicyErrors.RemoteCertificateChainErrors));
    }

    [Fact]
    public void Identity_round_trips_through_the_certificate_name()
    {
        Assert.True(PeerIdentity.TryParse("connector/cn_1", out var id));
        Assert.Equal(new PeerIdentity("connector", "cn_1"), id);
        Assert.False(PeerIdentity.TryParse("connector", out _));
        Assert.False(PeerIdentity.TryParse("a/b/c", out _));
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var cert = new CertificateRequest("CN=device/dv_9", key, HashAlgorithmName.SHA256).CreateSelfSigned(DateTimeOffset.UtcNow, DateTimeOffset.UtcNow.AddHours(1));
        Assert.True(PeerIdentity.TryFromCertificate(cert, out var fromCert));
        Assert.Equal("device/dv_9", fromCert.ToString());
    }
}
