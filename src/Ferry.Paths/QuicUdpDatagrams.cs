using System.Runtime.CompilerServices;
using Ferry.Core.Flows;
using Ferry.Quic;

namespace Ferry.Paths;

/// <summary>
/// The UDP flows of each QUIC connection: one <see cref="UdpDatagramMux"/> per connection, fed by that connection's one datagram
/// reader, which runs until the connection ends and then ends the connection's UDP flows.
/// </summary>
public static class QuicUdpDatagrams
{
    private static readonly ConditionalWeakTable<QuicConnection, UdpDatagramMux> Muxes = [];
    private static readonly Lock Gate = new();

    /// <summary>The connection's mux; the first call starts its datagram reader. The client and the connector both come here.</summary>
    public static UdpDatagramMux For(QuicConnection connection)
    {
        ArgumentNullException.ThrowIfNull(connection);
        lock (Gate)
        {
            if (Muxes.TryGetValue(connection, out var existing))
            {
                return existing;
            }
            var mux = new UdpDatagramMux(() => connection.MaxDatagramPayloadSize, datagram => TrySend(connection, datagram));
            Muxes.Add(connection, mux);
            _ = Task.Run(() => ReadAsync(connection, mux), CancellationToken.None);
            return mux;
        }
    }

    private static bool TrySend(QuicConnection connection, ReadOnlySpan<byte> datagram)
    {
        try
        {
            connection.SendDatagram(datagram);
            return true;
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or QuicException or ObjectDisposedException)
        {
            // Too large for the path now, not accepted, or the connection is gone: the flow's stream takes it or reports the end.
            return false;
        }
    }

    private static async Task ReadAsync(QuicConnection connection, UdpDatagramMux mux)
    {
        var reason = "the QUIC connection closed";
        try
        {
            while (true)
            {
                mux.Deliver(await connection.ReceiveDatagramAsync(CancellationToken.None));
            }
        }
        catch (Exception e) when (e is QuicException or ObjectDisposedException or InvalidOperationException or OperationCanceledException)
        {
            reason = $"the QUIC connection closed: {e.Message}";
        }
        finally
        {
            mux.Close(reason);
        }
    }
}
