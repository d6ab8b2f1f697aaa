using System.Net;
using System.Runtime.InteropServices;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Threading.Channels;
using Ferry.Quic.Interop;
using Ferry.Quic.Internal;
using static Ferry.Quic.Interop.Ngtcp2Const;

namespace Ferry.Quic;

public sealed partial class QuicConnection
{
    private unsafe void HandleErrorLocked(int rv)
    {
        ngtcp2_connection_close_error ccerr;
        switch (rv)
        {
            case NGTCP2_ERR_DISCARD_PKT:
                return; // a packet not for us (for example garbage from the peer's address); the connection is fine
            case NGTCP2_ERR_DRAINING when _statelessReset:
                TerminateLocked(new QuicException(QuicError.ConnectionAborted,
                    "The peer reset the connection (stateless reset): it no longer has state for it, for example after a restart."));
                return;
            case NGTCP2_ERR_DRAINING:
                Ngtcp2.ngtcp2_conn_get_connection_close_error(_c, &ccerr);
                TerminateLocked(FromPeerClose(ccerr));
                return;
            case NGTCP2_ERR_IDLE_CLOSE:
                TerminateLocked(new QuicException(QuicError.ConnectionIdle, "The connection timed out: nothing was received within the idle timeout."));
                return;
            case NGTCP2_ERR_HANDSHAKE_TIMEOUT:
                TerminateLocked(new QuicException(QuicError.ConnectionTimeout, "The QUIC handshake did not complete in time."));
                return;
            case NGTCP2_ERR_DROP_CONN:
                TerminateLocked(new QuicException(QuicError.ConnectionAborted, "The connection was dropped (stateless reset or fatal packet)."));
                return;
            case NGTCP2_ERR_CLOSING:
                TerminateLocked(new QuicException(QuicError.OperationAborted, "The connection is closing."));
                return;
            case NGTCP2_ERR_CRYPTO:
            {
                byte alert = Ngtcp2.ngtcp2_conn_get_tls_alert(_c);
                int tlsError = Ngtcp2.ngtcp2_conn_get_tls_error(_c);
                string detail = tlsError != 0 ? GnuTls.StrError(tlsError) : "TLS failure";
                var status = _session is null ? 0u : GnuTls.gnutls_session_get_verify_cert_status(_session.DangerousGetHandle());
                var failure = new AuthenticationException(status != 0
                    ? $"The peer's certificate failed verification against the trusted CA: {DescribeVerifyStatus(status)} (GnuTLS status 0x{status:x})."
                    : $"The TLS handshake failed locally: {detail} (alert {GnuTls.AlertName(alert)}).");
                LogEndLocked(failure);
                Ngtcp2.ngtcp2_connection_close_error_set_transport_error_tls_alert(&ccerr, alert, null, 0);
                SendCloseLocked(&ccerr);
                TerminateLocked(failure);
                return;
            }

            default:
            {
                var failure = rv == NGTCP2_ERR_CALLBACK_FAILURE && _callbackError is not null
                    ? new QuicException(QuicError.InternalError, "A callback failed: " + _callbackError.Message, inner: _callbackError)
                    : new QuicException(QuicError.TransportError, "ngtcp2: " + Ngtcp2.StrError(rv));
                LogEndLocked(failure);
                Ngtcp2.ngtcp2_connection_close_error_set_transport_error_liberr(&ccerr, rv, null, 0);
                SendCloseLocked(&ccerr);
                TerminateLocked(failure);
                return;
            }
        }
    }

    private static string DescribeVerifyStatus(uint status)
    {
        // gnutls_certificate_status_t bits (gnutls/gnutls.h).
        (uint Bit, string Text)[] known =
        [
            (1u << 6, "not issued by the trusted CA"),
            (1u << 7, "issuer is not a CA"),
            (1u << 9, "not yet valid"),
            (1u << 10, "expired"),
            (1u << 5, "revoked"),
            (1u << 8, "insecure algorithm"),
        ];
        var reasons = known.Where(k => (status & k.Bit) != 0).Select(k => k.Text).ToList();
        return reasons.Count > 0 ? string.Join(", ", reasons) : "invalid";
    }

    private unsafe Exception FromPeerClose(ngtcp2_connection_close_error ccerr)
    {
        string reason = ccerr.reasonlen > 0 ? ": " + Encoding.UTF8.GetString(ccerr.reason, (int)ccerr.reasonlen) : "";
        switch (ccerr.type)
        {
            case NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_APPLICATION:
                return new QuicException(QuicError.ConnectionAborted, $"The peer closed the connection with application error {ccerr.error_code}{reason}.", (long)ccerr.error_code);
            case NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_TRANSPORT_IDLE_CLOSE:
                return new QuicException(QuicError.ConnectionIdle, "The connection timed out.");
            default:
                if (ccerr.error_code is >= NGTCP2_CRYPTO_ERROR and < NGTCP2_CRYPTO_ERROR + 0x100)
                {
                    int alert = (int)(ccerr.error_code - NGTCP2_CRYPTO_ERROR);
                    string hint = alert switch
                    {
                        116 => ": this side presented no certificate the peer accepts (none, or not from a CA the peer trusts)",
                        48 => ": the peer does not trust the CA of this side's certificate",
                        42 or 43 or 44 or 45 or 46 => ": the peer rejected this side's certificate",
                        120 => ": no common ALPN protocol",
                        _ => "",
                    };
                    return new AuthenticationException($"The peer refused the TLS handshake with alert {GnuTls.AlertName(alert)} ({alert}){hint}{reason}.");
                }

                return new QuicException(QuicError.ConnectionAborted, $"The peer closed the connection with transport error 0x{ccerr.error_code:x}{reason}.", transportErrorCode: (long)ccerr.error_code);
        }
    }

    /// <summary>Logged before any CONNECTION_CLOSE leaves, so the log never lags behind what the peer sees.</summary>
    private void LogEndLocked(Exception error)
    {
        if (_endLogged)
        {
            return;
        }

        _endLogged = true;
        if (_callbackError is not null)
        {
            QuicLog.CallbackFailed(_endpoint.Logger, _remote.EndPoint, _callbackError);
        }

        if (_handshake.Task.IsCompleted)
        {
            QuicLog.ConnectionClosed(_endpoint.Logger, _remote.EndPoint, RemoteIdentity, error.Message);
        }
        else
        {
            QuicLog.HandshakeFailed(_endpoint.Logger, _remote.EndPoint, error.Message);
        }
    }

    private void TerminateLocked(Exception error)
    {
        if (_terminal is not null)
        {
            return;
        }

        _terminal = error;
        LogEndLocked(error);

        _timer.Change(Timeout.Infinite, Timeout.Infinite);
        _handshake.TrySetException(error);
        _ = _handshake.Task.Exception; // observed: nobody may be waiting on a server handshake
        foreach (var stream in _streams.Values)
        {
            stream.OnConnectionTerminatedLocked();
        }

        _incoming.Writer.TryComplete();
        _datagrams.Writer.TryComplete();
        _outgoingDatagrams.Clear();
        _streamCredit?.TrySetResult();

        // Closing period (RFC 9000 §10.2.1): keep answering the peer with our CONNECTION_CLOSE for a few
        // PTOs, in case the first copy was lost. Only the packet bytes are kept, not the ngtcp2 state.
        var pto = _c != 0 ? TimeSpan.FromTicks((long)(Ngtcp2.ngtcp2_conn_get_pto(_c) / 100)) : TimeSpan.Zero;
        var closing = TimeSpan.FromTicks(Math.Clamp(3 * pto.Ticks, TimeSpan.FromSeconds(2).Ticks, TimeSpan.FromSeconds(10).Ticks));
        foreach (var endpoint in _endpoints)
        {
            endpoint.Unregister(this, _closePacket, _local, _remote, closing);
        }

        _migration?.TrySetResult(false);
        ReleaseLocked();
        _terminated.TrySetResult();
    }

    /// <summary>Frees native state. Callbacks can no longer run, so the GCHandle can go too.</summary>
    private unsafe void ReleaseLocked()
    {
        if (_released)
        {
            return;
        }

        _released = true;
        _conn?.Dispose();
        _session?.Dispose();
        _c = 0;
        foreach (var stream in _streams.Values)
        {
            stream.ReleaseNativeLocked();
        }

        if (_connRef is not null)
        {
            NativeMemory.Free(_connRef);
            _connRef = null;
        }

        if (_self.IsAllocated)
        {
            _self.Free();
        }

        _timer.Dispose();
        if (_ownsTls)
        {
            _tls.Dispose();
        }
    }

    /// <summary>Tear down a connection whose creator gave up (constructor failure or cancelled connect).</summary>
    private unsafe void Abandon()
    {
        lock (_lock)
        {
            if (_terminal is null && _c != 0)
            {
                ngtcp2_connection_close_error ccerr;
                Ngtcp2.ngtcp2_connection_close_error_default(&ccerr);
                SendCloseLocked(&ccerr);
            }

            TerminateLocked(new QuicException(QuicError.OperationAborted, "The connection attempt was abandoned."));
        }
    }

    internal void ThrowIfTerminalLocked()
    {
        if (_terminal is not null)
        {
            throw TerminalException();
        }
    }

    internal Exception TerminalException() => _terminal switch
    {
        QuicException q => new QuicException(q.Error, q.Message, q.ApplicationErrorCode, q.TransportErrorCode, q),
        AuthenticationException a => new AuthenticationException(a.Message, a),
        { } e => new QuicException(QuicError.InternalError, e.Message, inner: e),
        null => new QuicException(QuicError.InternalError, "The connection is not closed."),
    };
}
