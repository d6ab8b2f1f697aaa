using System.Runtime.InteropServices;

namespace Ferry.Quic.Interop;

/// <summary>Owns an ngtcp2_conn; keeps the TLS session alive until the connection is deleted.</summary>
internal sealed class SafeNgtcp2ConnHandle : SafeHandle
{
    private SafeGnuTlsSessionHandle? _session;

    public SafeNgtcp2ConnHandle(nint conn) : base(0, ownsHandle: true) => SetHandle(conn);

    public override bool IsInvalid => handle == 0;

    // ngtcp2 calls into the TLS session while it runs, so the session must outlive the connection.
    public void SetSession(SafeGnuTlsSessionHandle session)
    {
        bool added = false;
        session.DangerousAddRef(ref added);
        _session = session;
    }

    protected override bool ReleaseHandle()
    {
        Ngtcp2.ngtcp2_conn_del(handle);
        _session?.DangerousRelease();
        return true;
    }
}

/// <summary>Owns a gnutls_session_t; holds a reference on its credentials.</summary>
internal sealed class SafeGnuTlsSessionHandle : SafeHandle
{
    private SafeGnuTlsCredentialsHandle? _credentials;

    public SafeGnuTlsSessionHandle(nint session) : base(0, ownsHandle: true) => SetHandle(session);

    public override bool IsInvalid => handle == 0;

    public void SetCredentials(SafeGnuTlsCredentialsHandle credentials)
    {
        bool added = false;
        credentials.DangerousAddRef(ref added);
        _credentials = credentials;
    }

    protected override bool ReleaseHandle()
    {
        GnuTls.gnutls_deinit(handle);
        _credentials?.DangerousRelease();
        return true;
    }
}

/// <summary>Owns a gnutls_certificate_credentials_t.</summary>
internal sealed class SafeGnuTlsCredentialsHandle : SafeHandle
{
    public SafeGnuTlsCredentialsHandle(nint cred) : base(0, ownsHandle: true) => SetHandle(cred);

    public override bool IsInvalid => handle == 0;

    protected override bool ReleaseHandle()
    {
        GnuTls.gnutls_certificate_free_credentials(handle);
        return true;
    }
}
