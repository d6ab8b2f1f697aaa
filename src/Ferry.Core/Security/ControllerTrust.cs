using System.Net.Security;
using System.Security.Cryptography.X509Certificates;

namespace Ferry.Core.Security;

/// <summary>How a daemon or the CLI decides to trust the controller's TLS certificate: a pinned fingerprint or a CA file, never "anything goes".</summary>
public sealed class ControllerTrust
{
    private readonly string? _fingerprint;
    private readonly X509Certificate2Collection? _roots;

    private ControllerTrust(string? fingerprint, X509Certificate2Collection? roots)
    {
        _fingerprint = fingerprint;
        _roots = roots;
    }

    /// <summary>Trust by the system's CA store (a controller with a public certificate).</summary>
    public static ControllerTrust System { get; } = new(null, null);

    public string Description => _fingerprint is not null ? $"fingerprint {_fingerprint}" : _roots is not null ? "CA file" : "system CA store";

    /// <summary>Builds the trust from the --controller-fingerprint and --controller-ca values; throws <see cref="ArgumentException"/> with an operator-readable message.</summary>
    public static ControllerTrust Create(string? fingerprint, string? caFile)
    {
        if (!string.IsNullOrWhiteSpace(fingerprint))
        {
            if (!CertificateFingerprint.TryNormalize(fingerprint, out var normalized, out var error))
            {
                throw new ArgumentException(error);
            }
            return new ControllerTrust(normalized, null);
        }
        if (!string.IsNullOrWhiteSpace(caFile))
        {
            if (!File.Exists(caFile))
            {
                throw new ArgumentException($"CA file '{caFile}' does not exist");
            }
            var roots = new X509Certificate2Collection();
            try
            {
                roots.ImportFromPemFile(caFile);
            }
            catch (Exception e) when (e is global::System.Security.Cryptography.CryptographicException or IOException)
            {
                throw new ArgumentException($"CA file '{caFile}' holds no readable PEM certificate: {e.Message}");
            }
            if (roots.Count == 0)
            {
                throw new ArgumentException($"CA file '{caFile}' holds no PEM certificate");
            }
            return new ControllerTrust(null, roots);
        }
        return System;
    }

    public bool Validate(X509Certificate? certificate, X509Chain? chain, SslPolicyErrors errors)
    {
        if (certificate is null)
        {
            return false;
        }
        if (_fingerprint is not null)
        {
            // A pinned leaf is trusted whatever its chain or name: the operator copied it from the controller.
            return string.Equals(CertificateFingerprint.Of(certificate), _fingerprint, StringComparison.Ordinal);
        }
        if (_roots is not null)
        {
            if ((errors & SslPolicyErrors.RemoteCertificateNameMismatch) != 0)
            {
                return false;
            }
            using var custom = new X509Chain();
            custom.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
            custom.ChainPolicy.CustomTrustStore.AddRange(_roots);
            custom.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
            using var leaf = new X509Certificate2(certificate);
            return custom.Build(leaf);
        }
        return errors == SslPolicyErrors.None;
    }

    /// <summary>An HTTP handler that applies this trust; used for the admin API, token refresh and the daemon session.</summary>
    public SocketsHttpHandler CreateHandler()
    {
        var handler = new SocketsHttpHandler
        {
            ConnectTimeout = TimeSpan.FromSeconds(10),
            PooledConnectionLifetime = TimeSpan.FromMinutes(5),
        };
        handler.SslOptions.RemoteCertificateValidationCallback = (_, cert, chain, errors) => Validate(cert, chain, errors);
        return handler;
    }
}
