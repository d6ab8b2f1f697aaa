using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Ferry.Controller.Storage;
using Ferry.Core.Security;

namespace Ferry.Controller.CertificateAuthority;

/// <summary>The deployment's CA: signs the short-lived certificates that connectors, clients and relays authenticate each other with.</summary>
public sealed class DeploymentCertificateAuthority : IDisposable
{
    private readonly X509Certificate2 _certificate;
    private readonly ECDsa _key;
    private readonly TimeProvider _time;

    private DeploymentCertificateAuthority(X509Certificate2 certificate, ECDsa key, TimeProvider time)
    {
        _certificate = certificate;
        _key = key;
        _time = time;
        CertificatePem = certificate.ExportCertificatePem();
    }

    public string CertificatePem { get; }


    public X509Certificate2 Certificate => _certificate;

    /// <summary>The CA's signing key, for artefacts such as relay tickets that peers verify against the CA certificate.</summary>
    public ECDsa SigningKey => _key;

    /// <summary>Loads the CA from the database, creating it on the very first start (replicas agree through the settings row).</summary>
    public static async Task<DeploymentCertificateAuthority> LoadOrCreateAsync(ControllerStore store, TimeProvider time, CancellationToken ct)
    {
        var existing = await store.GetSettingAsync("ca", ct);
        if (existing is null)
        {
            using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            var request = new CertificateRequest($"CN=Ferry deployment CA {Guid.NewGuid():N}", key, HashAlgorithmName.SHA256);
            request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, true, 0, true));
            request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
            request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
            var now = time.GetUtcNow();
            using var ca = request.CreateSelfSigned(now.AddDays(-1), now.AddYears(10));
            existing = await store.GetOrAddSettingAsync("ca", ca.ExportCertificatePem() + "\n" + key.ExportPkcs8PrivateKeyPem(), ct);
        }
        var certificate = X509Certificate2.CreateFromPem(existing);
        var caKey = ECDsa.Create();
        caKey.ImportFromPem(existing);
        return new DeploymentCertificateAuthority(X509CertificateLoader.LoadCertificate(certificate.RawData), caKey, time);
    }

    /// <summary>Signs a certificate for <paramref name="identity"/> over the public key in a PKCS#10 request; the request's own subject is ignored.</summary>
    public (string Pem, DateTimeOffset NotAfter) Issue(PeerIdentity identity, string csrPem, TimeSpan lifetime, bool honourRequestedNames = false, string? owner = null)
    {
        CertificateRequest csr;
        try
        {
            // Extensions are loaded only so a relay's requested names can be read; nothing else of the request is copied.
            csr = CertificateRequest.LoadSigningRequestPem(csrPem, HashAlgorithmName.SHA256,
                honourRequestedNames ? CertificateRequestLoadOptions.UnsafeLoadCertificateExtensions : CertificateRequestLoadOptions.Default);
        }
        catch (CryptographicException e)
        {
            throw new ArgumentException($"the certificate request is not a valid signed PKCS#10 request: {e.Message}", e);
        }
        var request = new CertificateRequest(new X500DistinguishedName($"CN={identity}"), csr.PublicKey, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyAgreement, true));
        // Both: a connector answers QUIC handshakes as a server, and every peer authenticates as a client too.
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension(
            [new Oid("1.3.6.1.5.5.7.3.1"), new Oid("1.3.6.1.5.5.7.3.2")], false));
        var san = new SubjectAlternativeNameBuilder();
        san.AddUri(new Uri($"ferry://{identity.Kind}/{identity.Id}"));
        if (owner is not null)
        {
            // A connector enforces policy per owner (user or service account); the device certificate says whose device it is.
            san.AddUri(new Uri($"{PeerIdentity.OwnerUriPrefix}{owner}"));
        }
        // Relays are dialled by address, so their certificates name the addresses they advertise; no other kind gets names.
        if (honourRequestedNames)
        {
            // A loaded request carries its extensions as plain X509Extension objects: match the SAN by OID.
            foreach (var extension in csr.CertificateExtensions.Where(e => e.Oid?.Value == "2.5.29.17"))
            {
                var requested = new X509SubjectAlternativeNameExtension(extension.RawData);
                foreach (var dns in requested.EnumerateDnsNames())
                {
                    san.AddDnsName(dns);
                }
                foreach (var ip in requested.EnumerateIPAddresses())
                {
                    san.AddIpAddress(ip);
                }
            }
        }
        request.CertificateExtensions.Add(san.Build());
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(_certificate, true, false));
        var now = _time.GetUtcNow();
        // Back-dated a little so a peer whose clock is slightly behind (within the ±5 s rule) still accepts it.
        var notBefore = now.AddMinutes(-5);
        var notAfter = now.Add(lifetime);
        var serial = RandomNumberGenerator.GetBytes(16);
        serial[0] &= 0x7F;
        using var issued = request.Create(_certificate.SubjectName, X509SignatureGenerator.CreateForECDsa(_key), notBefore, notAfter, serial);
        return (issued.ExportCertificatePem(), notAfter);
    }

    public void Dispose()
    {
        _certificate.Dispose();
        _key.Dispose();
    }
}
