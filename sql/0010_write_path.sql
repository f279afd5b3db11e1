-- Sessions are updated at every interim: leave room on each page so the update stays on
-- the same page (a HOT update, no index entries to write) when the indexed columns do
-- not change, which is almost always. It applies to pages written from now on; a table
-- that already holds many sessions gets it everywhere after VACUUM FULL.
ALTER TABLE sessions SET (fillfactor = 70);
