using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using Ferry.Quic.Interop;

namespace Ferry.Quic.Internal;

/// <summary>GnuTLS certificate credentials built once from <see cref="QuicTlsOptions"/> and shared by its sessions.</summary>
internal sealed unsafe class TlsContext : IDisposable
{
    // QUIC needs TLS 1.3 and no middlebox-compatibility mode (RFC 9001 §8.4).
    private const string Priority =
        "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:+CHACHA20-POLY1305:+AES-128-CCM:" +
        "-GROUP-ALL:+GROUP-X25519:+GROUP-SECP256R1:+GROUP-SECP384R1:+GROUP-SECP521R1:%DISABLE_TLS13_COMPAT_MODE";

    private readonly SafeGnuTlsCredentialsHandle _credentials;
    private readonly byte[][] _alpn;

    public TlsContext(QuicTlsOptions options, bool isServer)
    {
        ArgumentNullException.ThrowIfNull(options.TrustedCa);
        if (options.ApplicationProtocols.Count == 0)
        {
            throw new ArgumentException("At least one ALPN protocol is required.", nameof(options));
        }

        if (isServer && options.Certificate is null)
        {
            throw new ArgumentException("A server needs a certificate with a private key.", nameof(options));
        }

        Options = options;
        IsServer = isServer;
        _alpn = options.ApplicationProtocols.Select(Encoding.ASCII.GetBytes).ToArray();

        nint cred;
        Check(GnuTls.gnutls_certificate_allocate_credentials(&cred), "gnutls_certificate_allocate_credentials");
        _credentials = new SafeGnuTlsCredentialsHandle(cred);
        try
        {
            var ca = Encoding.ASCII.GetBytes(options.TrustedCa.ExportCertificatePem());
            fixed (byte* pca = ca)
            {
                var datum = new gnutls_datum_t { data = pca, size = (uint)ca.Length };
                int n = GnuTls.gnutls_certificate_set_x509_trust_mem(cred, &datum, GnuTls.GNUTLS_X509_FMT_PEM);
                if (n < 1)
                {
                    throw new ArgumentException($"The trusted CA could not be loaded: {(n < 0 ? GnuTls.StrError(n) : "no certificate")}", nameof(options));
                }
            }

            if (options.Certificate is { } cert)
            {
                // GnuTLS takes the chain as consecutive PEM blocks, leaf first.
                var chain = new StringBuilder(cert.ExportCertificatePem()).Append('\n');
                foreach (var intermediate in options.IntermediateCertificates)
                {
                    chain.Append(intermediate.ExportCertificatePem()).Append('\n');
                }

                var certPem = Encoding.ASCII.GetBytes(chain.ToString());
                var keyPem = Encoding.ASCII.GetBytes(ExportKeyPem(cert));
                try
                {
                    fixed (byte* pc = certPem)
                    fixed (byte* pk = keyPem)
                    {
                        var c = new gnutls_datum_t { data = pc, size = (uint)certPem.Length };
                        var k = new gnutls_datum_t { data = pk, size = (uint)keyPem.Length };
                        Check(GnuTls.gnutls_certificate_set_x509_key_mem(cred, &c, &k, GnuTls.GNUTLS_X509_FMT_PEM), "gnutls_certificate_set_x509_key_mem");
                    }
                }
                finally
                {
                    CryptographicOperations.ZeroMemory(keyPem);
                }
            }
        }
        catch
        {
            _credentials.Dispose();
            throw;
        }
    }

    public QuicTlsOptions Options { get; }

    public bool IsServer { get; }

    /// <summary>Creates a GnuTLS session configured for QUIC; conn_ref must stay valid for the session's life.</summary>
    public SafeGnuTlsSessionHandle CreateSession(ngtcp2_crypto_conn_ref* connRef)
    {
        nint session;
        uint flags = IsServer
            ? GnuTls.GNUTLS_SERVER | GnuTls.GNUTLS_NO_AUTO_SEND_TICKET | GnuTls.GNUTLS_NO_END_OF_EARLY_DATA
            : GnuTls.GNUTLS_CLIENT | GnuTls.GNUTLS_NO_END_OF_EARLY_DATA;
        Check(GnuTls.gnutls_init(&session, flags), "gnutls_init");
        var handle = new SafeGnuTlsSessionHandle(session);
        try
        {
            handle.SetCredentials(_credentials);
            var priority = Encoding.ASCII.GetBytes(Priority + "\0");
            fixed (byte* pp = priority)
            {
                Check(GnuTls.gnutls_priority_set_direct(session, pp, null), "gnutls_priority_set_direct");
            }

            int rv = IsServer
                ? Ngtcp2Crypto.ngtcp2_crypto_gnutls_configure_server_session(session)
                : Ngtcp2Crypto.ngtcp2_crypto_gnutls_configure_client_session(session);
            if (rv != 0)
            {
                throw new QuicException(QuicError.InternalError, "ngtcp2_crypto_gnutls_configure_*_session failed");
            }

            GnuTls.gnutls_session_set_ptr(session, connRef);
            Check(GnuTls.gnutls_credentials_set(session, GnuTls.GNUTLS_CRD_CERTIFICATE, _credentials.DangerousGetHandle()), "gnutls_credentials_set");

            // Verify the peer chain against TrustedCa during the handshake; identity is the Subject CN, not a host name.
            GnuTls.gnutls_session_set_verify_cert(session, null, 0);
            if (IsServer)
            {
                GnuTls.gnutls_certificate_server_set_request(session, Options.RequirePeerCertificate ? GnuTls.GNUTLS_CERT_REQUIRE : 1);
            }

            SetAlpn(session);
            if (!IsServer && Options.ServerName is { Length: > 0 } sni)
            {
                var name = Encoding.ASCII.GetBytes(sni);
                fixed (byte* pn = name)
                {
                    Check(GnuTls.gnutls_server_name_set(session, GnuTls.GNUTLS_NAME_DNS, pn, (nuint)name.Length), "gnutls_server_name_set");
                }
            }

            return handle;
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    public void Dispose() => _credentials.Dispose();

    private void SetAlpn(nint session)
    {
        var handles = new System.Runtime.InteropServices.GCHandle[_alpn.Length];
        var datums = stackalloc gnutls_datum_t[_alpn.Length];
        try
        {
            for (int i = 0; i < _alpn.Length; i++)
            {
                handles[i] = System.Runtime.InteropServices.GCHandle.Alloc(_alpn[i], System.Runtime.InteropServices.GCHandleType.Pinned);
                datums[i] = new gnutls_datum_t { data = (byte*)handles[i].AddrOfPinnedObject(), size = (uint)_alpn[i].Length };
            }

            // GnuTLS copies the protocol names, so the pins can go right after.
            Check(GnuTls.gnutls_alpn_set_protocols(session, datums, (uint)_alpn.Length, GnuTls.GNUTLS_ALPN_MANDATORY), "gnutls_alpn_set_protocols");
        }
        finally
        {
            foreach (var h in handles)
            {
                if (h.IsAllocated)
                {
                    h.Free();
                }
            }
        }
    }

    private static string ExportKeyPem(X509Certificate2 cert)
    {
        if (cert.GetECDsaPrivateKey() is { } ec)
        {
            using (ec)
            {
                return ec.ExportPkcs8PrivateKeyPem();
            }
        }

        if (cert.GetRSAPrivateKey() is { } rsa)
        {
            using (rsa)
            {
                return rsa.ExportPkcs8PrivateKeyPem();
            }
        }

        throw new ArgumentException("The certificate has no exportable ECDSA or RSA private key.", nameof(cert));
    }

    private static void Check(int rv, string what)
    {
        if (rv < 0)
        {
            throw new QuicException(QuicError.InternalError, $"{what} failed: {GnuTls.StrError(rv)}");
        }
    }
}
