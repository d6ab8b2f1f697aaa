using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Ferry.Relay.Tests.Support;

/// <summary>An in-process deployment CA (ECDSA P-256) issuing peer and relay certificates the way the controller will.</summary>
internal sealed class TestPki : IDisposable
{
    private TestPki(X509Certificate2 ca, ECDsa key)
    {
        CaWithKey = ca;
        CaKey = key;
        Ca = X509CertificateLoader.LoadCertificate(ca.RawData);
    }

    /// <summary>The CA certificate without its key, as handed to relays and peers.</summary>
    public X509Certificate2 Ca { get; }

    public X509Certificate2 CaWithKey { get; }

    /// <summary>The CA key, which also signs relay tickets.</summary>
    public ECDsa CaKey { get; }

    public static TestPki Create(string name = "Ferry Test CA")
    {
        var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={name}", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        var now = DateTimeOffset.UtcNow;
        var ca = request.CreateSelfSigned(now.AddDays(-7), now.AddDays(30));
        return new TestPki(ca, key);
    }

    /// <summary>Issues a certificate with the given subject CN (kind/id), usable as TLS client and server.</summary>
    public X509Certificate2 Issue(string commonName, bool relay = false, DateTimeOffset? notBefore = null, DateTimeOffset? notAfter = null)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={commonName}, O=Ferry Test", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension(
            [new Oid("1.3.6.1.5.5.7.3.1"), new Oid("1.3.6.1.5.5.7.3.2")], false));
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(CaWithKey, true, false));
        if (relay)
        {
            var san = new SubjectAlternativeNameBuilder();
            san.AddIpAddress(IPAddress.Loopback);
            san.AddIpAddress(IPAddress.IPv6Loopback);
            san.AddDnsName("localhost");
            request.CertificateExtensions.Add(san.Build());
        }

        var now = DateTimeOffset.UtcNow;
        var serial = new byte[16];
        RandomNumberGenerator.Fill(serial);
        serial[0] &= 0x7f;
        using var issued = request.Create(CaWithKey, notBefore ?? now.AddHours(-1), notAfter ?? now.AddDays(1), serial);
        using var withKey = issued.CopyWithPrivateKey(key);

        // A PKCS#12 round trip gives a certificate whose key every TLS backend accepts.
        return X509CertificateLoader.LoadPkcs12(withKey.Export(X509ContentType.Pkcs12), password: null);
    }

    public void Dispose()
    {
        Ca.Dispose();
        CaWithKey.Dispose();
        CaKey.Dispose();
    }
}
