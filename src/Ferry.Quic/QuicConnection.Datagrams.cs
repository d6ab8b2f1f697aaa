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
    /// <summary>
    /// Largest payload SendDatagram accepts now: bounded by the peer's max_datagram_frame_size and the current
    /// path MTU; 0 if the peer does not accept datagrams.
    /// </summary>
    public unsafe int MaxDatagramPayloadSize
    {
        get
        {
            lock (_lock)
            {
                if (_terminal is not null || !_handshakeDone)
                {
                    return 0;
                }

                var remote = Ngtcp2.ngtcp2_conn_get_remote_transport_params(_c);
                if (remote is null || remote->max_datagram_frame_size == 0)
                {
                    return 0;
                }

                // Short header (1 + CID up to 20 + packet number up to 4) + AEAD tag 16 + frame type and length 3.
                long byPath = (long)Ngtcp2.ngtcp2_conn_get_max_tx_udp_payload_size(_c) - 44;
                long byPeer = (long)Math.Min(remote->max_datagram_frame_size, int.MaxValue) - 3;
                return (int)Math.Max(0, Math.Min(byPath, byPeer));
            }
        }
    }

    /// <summary>
    /// Queues an unreliable datagram (RFC 9221). It may be lost and is never retransmitted; when datagrams are
    /// sent faster than the path allows, the oldest queued ones are dropped.
    /// </summary>
    public void SendDatagram(ReadOnlySpan<byte> datagram)
    {
        int max = MaxDatagramPayloadSize;
        lock (_lock)
        {
            ThrowIfTerminalLocked();
            if (max == 0)
            {
                throw new InvalidOperationException("The peer does not accept QUIC datagrams (max_datagram_frame_size is 0).");
            }

            if (datagram.Length > max)
            {
                throw new ArgumentException($"The datagram is {datagram.Length} bytes; at most {max} fit in one packet.", nameof(datagram));
            }

            if (_outgoingDatagrams.Count >= Math.Max(1, _options.DatagramReceiveQueueLength))
            {
                _outgoingDatagrams.Dequeue();
            }

            _outgoingDatagrams.Enqueue(datagram.ToArray());
            FlushLocked();
            ArmTimerLocked();
        }
    }

    /// <summary>Waits for the next datagram from the peer.</summary>
    public async ValueTask<byte[]> ReceiveDatagramAsync(CancellationToken cancellationToken = default)
    {
        try
        {
            return await _datagrams.Reader.ReadAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (ChannelClosedException)
        {
            throw TerminalException();
        }
    }
}
