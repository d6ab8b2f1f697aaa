namespace Ferry.Relay.Tests.Support;

/// <summary>Sends numbered, checksummed packets in windows and checks that each window arrives whole before the next.</summary>
internal static class Exchange
{
    public static async Task RunAsync(
        Func<ReadOnlyMemory<byte>, ValueTask<bool>> send,
        System.Threading.Channels.ChannelReader<RelayPacket> receive,
        string expectedSender,
        PacketLedger ledger,
        int windows,
        int window)
    {
        for (var w = 0; w < windows; w++)
        {
            for (var i = 0; i < window; i++)
            {
                Assert.True(await send(ledger.Next(ledger.NextLength())).Within(), "send refused");
            }

            // Waiting for each window keeps the test lossless by design (no queue can overflow), so a lost byte is a bug.
            for (var i = 0; i < window; i++)
            {
                var packet = await receive.ReadAsync(Bounded.Ct).Within();
                Assert.Equal(expectedSender, packet.FromPeer);
                Assert.True(ledger.Accept(packet.Packet.Span), $"packet corrupted or duplicated in window {w}");
            }
        }

        Assert.Equal(ledger.Sent, ledger.Received);
    }
}
