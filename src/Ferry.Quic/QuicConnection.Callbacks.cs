using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Ferry.Quic.Interop;
using Ferry.Quic.Internal;
using static Ferry.Quic.Interop.Ngtcp2Const;

namespace Ferry.Quic;

public sealed partial class QuicConnection
{
    /// <summary>
    /// Static entry points ngtcp2 calls. Each finds its connection through the GCHandle in user_data and
    /// never lets an exception into native code: it records it and returns NGTCP2_ERR_CALLBACK_FAILURE.
    /// They run inside an ngtcp2 call, so the connection lock is already held by this thread.
    /// </summary>
    private static unsafe class NativeCallbacks
    {
        public static readonly ngtcp2_callbacks Client = Build(isServer: false);
        public static readonly ngtcp2_callbacks Server = Build(isServer: true);

        private static ngtcp2_callbacks Build(bool isServer)
        {
            var cb = new ngtcp2_callbacks
            {
                recv_crypto_data = Ngtcp2Crypto.recv_crypto_data_cb,
                encrypt = Ngtcp2Crypto.encrypt_cb,
                decrypt = Ngtcp2Crypto.decrypt_cb,
                hp_mask = Ngtcp2Crypto.hp_mask_cb,
                update_key = Ngtcp2Crypto.update_key_cb,
                delete_crypto_aead_ctx = Ngtcp2Crypto.delete_crypto_aead_ctx_cb,
                delete_crypto_cipher_ctx = Ngtcp2Crypto.delete_crypto_cipher_ctx_cb,
                get_path_challenge_data = Ngtcp2Crypto.get_path_challenge_data_cb,
                version_negotiation = Ngtcp2Crypto.version_negotiation_cb,
                rand = (delegate* unmanaged<byte*, nuint, ngtcp2_rand_ctx*, void>)&Rand,
                get_new_connection_id = (delegate* unmanaged<nint, ngtcp2_cid*, byte*, nuint, void*, int>)&GetNewConnectionId,
                remove_connection_id = (delegate* unmanaged<nint, ngtcp2_cid*, void*, int>)&RemoveConnectionId,
                handshake_completed = (delegate* unmanaged<nint, void*, int>)&HandshakeCompleted,
                handshake_confirmed = (delegate* unmanaged<nint, void*, int>)&HandshakeConfirmed,
                recv_stream_data = (delegate* unmanaged<nint, uint, long, ulong, byte*, nuint, void*, void*, int>)&RecvStreamData,
                acked_stream_data_offset = (delegate* unmanaged<nint, long, ulong, ulong, void*, void*, int>)&AckedStreamDataOffset,
                stream_open = (delegate* unmanaged<nint, long, void*, int>)&StreamOpen,
                stream_close = (delegate* unmanaged<nint, uint, long, ulong, void*, void*, int>)&StreamClose,
                stream_reset = (delegate* unmanaged<nint, long, ulong, ulong, void*, void*, int>)&StreamReset,
                extend_max_local_streams_bidi = (delegate* unmanaged<nint, ulong, void*, int>)&ExtendMaxLocalStreams,
                extend_max_local_streams_uni = (delegate* unmanaged<nint, ulong, void*, int>)&ExtendMaxLocalStreams,
                extend_max_stream_data = (delegate* unmanaged<nint, long, ulong, void*, void*, int>)&ExtendMaxStreamData,
                recv_datagram = (delegate* unmanaged<nint, uint, byte*, nuint, void*, int>)&RecvDatagram,
                path_validation = (delegate* unmanaged<nint, uint, ngtcp2_path*, int, void*, int>)&PathValidation,
                recv_stateless_reset = (delegate* unmanaged<nint, void*, void*, int>)&RecvStatelessReset,
            };
            if (isServer)
            {
                cb.recv_client_initial = Ngtcp2Crypto.recv_client_initial_cb;
            }
            else
            {
                cb.client_initial = Ngtcp2Crypto.client_initial_cb;
                cb.recv_retry = Ngtcp2Crypto.recv_retry_cb;
            }

            return cb;
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static QuicConnection? From(void* userData) =>
            userData is null ? null : GCHandle.FromIntPtr((nint)userData).Target as QuicConnection;

        private static int Fail(QuicConnection? c, Exception e)
        {
            if (c is not null)
            {
                c._callbackError ??= e;
            }

            return NGTCP2_ERR_CALLBACK_FAILURE;
        }

        [UnmanagedCallersOnly]
        public static nint GetConn(ngtcp2_crypto_conn_ref* connRef)
        {
            try
            {
                return From(connRef->user_data)?._c ?? 0;
            }
            catch
            {
                return 0;
            }
        }

        [UnmanagedCallersOnly]
        private static void Rand(byte* dest, nuint length, ngtcp2_rand_ctx* ctx)
        {
            try
            {
                RandomNumberGenerator.Fill(new Span<byte>(dest, (int)length));
            }
            catch
            {
                // RandomNumberGenerator does not fail in practice; ngtcp2 gives no way to report it anyway.
            }
        }

        [UnmanagedCallersOnly]
        private static int GetNewConnectionId(nint conn, ngtcp2_cid* cid, byte* token, nuint cidlen, void* userData)
        {
            var c = From(userData);
            try
            {
                var bytes = new Span<byte>(cid->data, (int)cidlen);
                RandomNumberGenerator.Fill(bytes);
                cid->datalen = cidlen;
                if (c is null)
                {
                    RandomNumberGenerator.Fill(new Span<byte>(token, NGTCP2_STATELESS_RESET_TOKENLEN));
                    return 0;
                }

                c._endpoint.MakeStatelessResetToken(cid, token);
                c.RegisterCid(CidKey.From(bytes));
                return 0;
            }
            catch (Exception e)
            {
                return Fail(c, e);
            }
        }

        [UnmanagedCallersOnly]
        private static int RemoveConnectionId(nint conn, ngtcp2_cid* cid, void* userData)
        {
            var c = From(userData);
            try
            {
                if (c is not null)
                {
                    c.UnregisterCid(CidKey.From(*cid));
                }

                return 0;
            }
            catch (Exception e)
            {
                return Fail(c, e);
            }
        }

        [UnmanagedCallersOnly]
        private static int HandshakeCompleted(nint conn, void* userData)
        {
            var c = From(userData);
            if (c is not null)
            {
                // Finished outside the callback: GnuTLS is still inside its handshake here.
                c._handshakeCompletedPending = true;
                c._handshakeConfirmedPending |= c.IsServer;
            }

            return 0;
        }

        [UnmanagedCallersOnly]
        private static int HandshakeConfirmed(nint conn, void* userData)
        {
            var c = From(userData);
            if (c is not null)
            {
                c._handshakeConfirmedPending = true;
            }

            return 0;
        }

        [UnmanagedCallersOnly]
        private static int RecvStreamData(nint conn, uint flags, long streamId, ulong offset, byte* data, nuint datalen, void* userData, void* streamUserData)
        {
            var c = From(userData);
            try
            {
                c?.FindStreamLocked(streamId)?.OnReceiveLocked(new ReadOnlySpan<byte>(data, (int)datalen), (flags & NGTCP2_STREAM_DATA_FLAG_FIN) != 0);
                return 0;
            }
            catch (Exception e)
            {
                return Fail(c, e);
            }
        }

        [UnmanagedCallersOnly]
        private static int AckedStreamDataOffset(nint conn, long streamId, ulong offset, ulong datalen, void* userData, void* streamUserData)
        {
            var c = From(userData);
            try
            {
                c?.FindStreamLocked(streamId)?.OnAckedLocked((long)(offset + datalen));
                return 0;
            }
            catch (Exception e)
            {
                return Fail(c, e);
            }
        }

        [UnmanagedCallersOnly]
        private static int StreamOpen(nint conn, long streamId, void* userData)
        {
            var c = From(userData);
            try
            {
                if (c is not null)
                {
                    bool bidi = (streamId & 0x2) == 0;
                    var stream = new QuicStream(c, streamId, canRead: true, canWrite: bidi, c._options.StreamSendBufferSize);
                    c._streams.Add(streamId, stream);
                    c._incoming.Writer.TryWrite(stream);
                }

                return 0;
            }
            catch (Exception e)
            {
                return Fail(c, e);
            }
        }

        [UnmanagedCallersOnly]
        private static int StreamClose(nint conn, uint flags, long streamId, ulong appErrorCode, void* userData, void* streamUserData)
        {
            var c = From(userData);
            try
            {
                if (c is not null && c._streams.Remove(streamId, out var stream))
                {
                    bool codeSet = (flags & NGTCP2_STREAM_CLOSE_FLAG_APP_ERROR_CODE_SET) != 0;
                    stream.OnClosedLocked(codeSet ? (long)appErrorCode : null);
                    if (Ngtcp2.ngtcp2_conn_is_local_stream(conn, streamId) == 0)
                    {
                        // Give the peer back the stream credit this one used.
                        if ((streamId & 0x2) == 0)
                        {
                            Ngtcp2.ngtcp2_conn_extend_max_streams_bidi(conn, 1);
                        }
                        else
                        {
                            Ngtcp2.ngtcp2_conn_extend_max_streams_uni(conn, 1);
                        }
                    }
                }

                return 0;
            }
            catch (Exception e)
            {
                return Fail(c, e);
            }
        }

        [UnmanagedCallersOnly]
        private static int StreamReset(nint conn, long streamId, ulong finalSize, ulong appErrorCode, void* userData, void* streamUserData)
        {
            var c = From(userData);
            try
            {
                c?.FindStreamLocked(streamId)?.OnPeerResetLocked((long)appErrorCode);
                return 0;
            }
            catch (Exception e)
            {
                return Fail(c, e);
            }
        }

        [UnmanagedCallersOnly]
        private static int ExtendMaxLocalStreams(nint conn, ulong maxStreams, void* userData)
        {
            var c = From(userData);
            if (c?._streamCredit is { } waiter)
            {
                c._streamCredit = null;
                waiter.TrySetResult();
            }

            return 0;
        }

        [UnmanagedCallersOnly]
        private static int RecvStatelessReset(nint conn, void* reset, void* userData)
        {
            var c = From(userData);
            if (c is not null)
            {
                c._statelessReset = true;
            }

            return 0;
        }

        [UnmanagedCallersOnly]
        private static int PathValidation(nint conn, uint flags, ngtcp2_path* path, int result, void* userData)
        {
            var c = From(userData);
            try
            {
                c?.OnPathValidatedLocked(path, result == 0 /* NGTCP2_PATH_VALIDATION_RESULT_SUCCESS */);
                return 0;
            }
            catch (Exception e)
            {
                return Fail(c, e);
            }
        }

        [UnmanagedCallersOnly]
        private static int RecvDatagram(nint conn, uint flags, byte* data, nuint datalen, void* userData)
        {
            var c = From(userData);
            try
            {
                c?._datagrams.Writer.TryWrite(new ReadOnlySpan<byte>(data, (int)datalen).ToArray());
                return 0;
            }
            catch (Exception e)
            {
                return Fail(c, e);
            }
        }

        [UnmanagedCallersOnly]
        private static int ExtendMaxStreamData(nint conn, long streamId, ulong maxData, void* userData, void* streamUserData)
        {
            var c = From(userData);
            try
            {
                if (c?.FindStreamLocked(streamId) is { } stream && c._blocked.Remove(stream))
                {
                    c.EnqueuePendingLocked(stream);
                }

                return 0;
            }
            catch (Exception e)
            {
                return Fail(c, e);
            }
        }
    }
}
